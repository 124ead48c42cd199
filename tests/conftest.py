"""Shared fixtures: the shipped configs shrunk to tiny runs under tmp_path."""
from __future__ import annotations

import copy
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.fakes  # noqa: F401  (registers the test models and data)
from tests.postgres import postgresql_url  # noqa: F401  (a fixture: a throwaway PostgreSQL server)
from tests.shrinks import SHRINKS as ARCHS  # noqa: F401  (the one shrink table; ARCHS: its older name)
from tests.shrinks import shrunk_config  # noqa: F401
from utils.config import read_config_file
from utils.tree import tensors

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False (run with -m cuda on a GPU "
                                   "machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def run_cli(*args: str, timeout: float = 240, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <args>` from the project root; returns the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def one_line_error(stderr: str) -> str:
    """Assert that `stderr` is the CLIs' one-line error (no traceback); returns it."""
    err = stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def pinwheel_config(tmp_path: Path) -> dict:
    """configs/vae_pinwheel.yaml as a 3-epoch run under tmp_path, with dropout and a scheduler."""
    config = read_config_file(ROOT / "configs" / "vae_pinwheel.yaml")
    config["arch"]["args"].update(hidden_dims=[16, 16], dropout=0.1, kl_warmup_epochs=2)
    config["data_loader"]["args"].update(points_per_class=20, batch_size=10, validation_split=0.2)
    config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}
    config["trainer"].update(epochs=3, save_dir=str(tmp_path / "saved"), save_period=1, keep_last=0,
                             verbosity=0, tensorboard=False, visualize_every=0)
    return config


@pytest.fixture
def regression_config(tmp_path: Path) -> dict:
    """The deterministic LinearTest model on 64 regression points, SGD, no validation."""
    return {
        "name": "regression",
        "seed": 0,
        "n_gpu": 0,
        "arch": {"type": "LinearTest", "args": {}},
        "data_loader": {"type": "Regression", "args": {"batch_size": 16, "num_examples": 64}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.05}},
        "trainer": {"epochs": 3, "save_dir": str(tmp_path / "saved"), "monitor": "min loss",
                    "verbosity": 0, "tensorboard": False},
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped when the name ends in .gz)."""
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_mnist(folder: Path) -> Path:
    """A tiny MNIST in torchvision's raw layout under `folder`: 60 train and 30 test images (gzipped test
    split). Returns `folder`, the data loader's root."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 60, ""), ("t10k", 30, ".gz")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{gz}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{gz}", rng.integers(0, 10, n, dtype=np.uint8))
    return folder


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return make_mnist(tmp_path / "mnist")


@pytest.fixture
def mnist_config(tmp_path: Path, mnist_root: Path) -> dict:
    config = read_config_file(ROOT / "configs" / "vae_mnist.yaml")
    config["arch"]["args"].update(latent_dim=4, hidden_dims=[32])
    config["data_loader"]["args"].update(root=str(mnist_root), download=False, batch_size=16,
                                         validation_split=12, num_workers=0)
    config["trainer"].update(epochs=2, save_dir=str(tmp_path / "saved"), verbosity=0, early_stop=0)
    config["n_gpu"] = 0
    return copy.deepcopy(config)


def event_tags(run_dir: Path, split: str) -> dict:
    """The tags of the TensorBoard run `split` (train, val or test; "." the run folder's own) of a run folder,
    every image kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir / split), size_guidance={"images": 0}).Reload().Tags()


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def train_halfway_and_resume(config: dict, epochs: int) -> tuple[Path, dict]:
    """Train `config` for `epochs` epochs in one run, and for its own (fewer) epochs then resumed from
    last.pt up to `epochs`; assert that both end with the same model state. Returns the resumed run's
    folder and final checkpoint."""
    from trainer.components import load_and_check
    from trainer.jobs import train
    from utils.checkpoint import load_checkpoint

    full = train(load_and_check(base=config, overrides=[f"trainer.epochs={epochs}"]))
    half = train(load_and_check(base=config))
    path = half.run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    train(load_and_check(base=checkpoint["config"], overrides=[f"trainer.epochs={epochs}"]), checkpoint, path)
    a, b = final_state(full.run_dir), final_state(half.run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return half.run_dir, b


def assert_finite_under_extreme_encoder(model: torch.nn.Module, observations: list[torch.Tensor],
                                        latent_dim: int) -> None:
    """With the recognition network's last bias at +-1e30 (means 1e30; raw precisions 1e30, -1e30, then 0:
    the bounds' extremes), a training step on each of `observations` keeps the outputs, statistics and
    gradients finite."""
    model.train()
    with torch.no_grad():
        last = model.encoder.net.net[-1]
        last.bias[:latent_dim] = 1e30
        last.bias[latent_dim:] = torch.tensor([1e30, -1e30, 0.0][:latent_dim] + [0.0] * (latent_dim - 3))
    for y in observations:
        out = model({"x": y})
        out["loss"].backward()
        statistics = out.pop("statistics")
        assert all(torch.isfinite(v).all() for v in [*out.values(), *tensors(statistics)])
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
