"""Every shipped config loads, builds its data and model, and takes a training step;
the CLI's short flags and overrides reach the saved config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import train as train_script
from data_loader.example_files import write_images, write_sequences, write_vectors
from tests.conftest import ROOT, event_tags, one_line_error
from tests.test_strokes import make_drawings, save
from trainer import jobs
from trainer.components import build_data, build_model, load_and_check
from trainer.jobs import train
from trainer.optim import build_optimizers
from utils.config import read_config_file

SHIPPED = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*") if p.suffix in (".json", ".yaml")
                 and p.parent.name != "search")  # configs/search/: sweep.py search spaces (tests/test_sweep.py)


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_shipped_config_builds_and_steps(path, mnist_root, tmp_path):
    overrides = []
    config = load_and_check(ROOT / path)
    if config["data_loader"]["type"] == "PenStrokes":  # a small generated stroke file
        overrides = [f"data_loader.args.path={save(tmp_path / 'strokes.npy', make_drawings(n=40))}",
                     "data_loader.args.window_len=16"]
    if path.parent.name == "own":  # your own data: the example files, small
        write = {"Arrays": lambda: write_vectors(tmp_path / "v.npz", points_per_class=20),
                 "ImageFolder": lambda: write_images(tmp_path / "images", per_class=10),
                 "Sequences": lambda: write_sequences(tmp_path / "s.npz", num_sequences=10, min_len=20, max_len=40)}
        overrides = [f"data_loader.args.path={write[config['data_loader']['type']]()}",
                     "data_loader.args.batch_size=4", "data_loader.args.validation_split=0"]
    if config["data_loader"]["type"] == "MNIST":  # offline: the tiny generated copy
        overrides = [f"data_loader.args.root={mnist_root}", "data_loader.args.download=false",
                     "data_loader.args.validation_split=10", "data_loader.args.num_workers=0",
                     "data_loader.args.train_range=null", "data_loader.args.test_range=null"]
    config = load_and_check(ROOT / path, overrides)
    data = build_data(config)
    model = build_model(config, data)
    optimizers, _ = build_optimizers(model, config)
    batch = next(iter(data.train_loader(seed=0)))
    loss = model(batch)["loss"]
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    assert torch.isfinite(loss)


#: the shipped configs of generated data that write TensorBoard curves (configs/bench/: timings, no curves)
GENERATED = [path for path in SHIPPED if (config := read_config_file(ROOT / path))["data_loader"]["type"] in
             ("Pinwheel", "DotVideo", "SwitchingDots") and config["trainer"].get("tensorboard", True)]


@pytest.mark.parametrize("path", GENERATED, ids=str)
def test_shipped_configs_of_generated_data_have_a_small_validation_set(path):
    """A validation curve in TensorBoard, evaluated every epoch: at most a quarter of the training size."""
    data = build_data(load_and_check(ROOT / path))
    assert data.val_set is not None and 0 < len(data.val_set) <= len(data.train_set) / 4
    args = read_config_file(ROOT / path)["data_loader"]["args"]
    if not args.get("validation_split"):  # drawn from the generator: the training set keeps every example
        assert f"val_seed {args['val_seed']}" in data.val_source


def test_validation_split_on_a_config_with_a_generated_validation_set_is_a_one_line_error(capsys):
    argv = ["-c", "configs/svae_gmm.yaml", "--set", "data_loader.args.validation_split=0.1", "--dry-run"]
    assert train_script.main(argv) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "'data_loader.args.val_points_per_class' (20)" in err and "'data_loader.args.validation_split'" in err


def test_short_flags_and_overrides_reach_the_run(tmp_path):
    code = train_script.main(["-c", "configs/vae_pinwheel.json", "--lr", "0.5", "--bs", "20", "--epochs", "1",
                              "--seed", "3", "--set", f"trainer.save_dir={tmp_path}", "--set",
                              "trainer.verbosity=0", "--set", "arch.args.hidden_dims=[8]"])
    assert code == 0
    [run_dir] = tmp_path.glob("vae_pinwheel/*")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optimizer"]["args"]["lr"] == 0.5 and saved["data_loader"]["args"]["batch_size"] == 20
    assert saved["trainer"]["epochs"] == 1 and saved["seed"] == 3 and saved["arch"]["args"]["hidden_dims"] == [8]


def test_mnist_vae_end_to_end(mnist_config, tmp_path):
    run = train(load_and_check(base=mnist_config))
    assert {"val/reconstructions", "val/samples"} <= set(event_tags(run.run_dir, "val")["images"])
    results = jobs.evaluate(run.run_dir / "checkpoints" / "model_best.pt", iw_samples=5, progress=False)
    assert results["num_examples"] == 30 and results["iw_nll"] > 0
    assert Path(run.run_dir / "test_metrics.json").exists()
