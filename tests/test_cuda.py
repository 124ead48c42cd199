"""CUDA: every architecture trains on one GPU (full precision, bf16 and fp16 autocast), on two under
DataParallel and under DDP with nccl; test.py evaluates a checkpoint on the GPU; a run moves from the GPU to
the CPU and back by resume; the float64 SVAE inference gives the CPU's results on the GPU.

Every test is marked `cuda` and skipped, with the reason, where torch sees no CUDA device (tests/conftest.py);
the 2-GPU ones also where fewer than 2 are visible. On a GPU machine: `python -m pytest -m cuda`, or
`bash benchmarks/gpu_check.sh`, which runs them and the GPU benchmarks.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

import test as test_script
from model.svae.gmm_inference import local_meanfield
from model.svae.kalman import lds_posterior
from model.svae.slds_inference import switching_meanfield
from tests.conftest import ARCHS, run_cli, shrunk_config
from tests.test_distributed import SVAE_SHRINKS, TORCHRUN
from tests.test_kalman import random_nodes as chain_nodes
from tests.test_kalman import random_prior
from tests.test_slds_inference import random_nodes as switching_nodes
from tests.test_slds_inference import random_switching
from tests.test_svae_gmm import mixtures, random_globals, random_potentials
from trainer import jobs
from trainer.components import build_data, build_model, load_and_check
from trainer.trainer import AMP_DTYPES, Trainer
from utils.checkpoint import load_checkpoint
from utils.seeding import seed_everything

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
NUM_GPUS = torch.cuda.device_count()
TWO_GPUS = pytest.mark.skipif(0 < NUM_GPUS < 2, reason=f"needs 2 GPUs, {NUM_GPUS} visible")  # 0: no CUDA, skipped
STEPS = 8  # training steps on one GPU: fp16's GradScaler may skip the first few (overflow at scale 2^16)

SVAES = sorted(arch for arch in ARCHS if arch.startswith("SVAE-"))


# ---------------------------------------------------------------- configs and the Trainer train.py builds
@pytest.fixture
def tiny(tmp_path: Path, mnist_root: Path) -> Callable[..., dict]:
    """tiny(arch, n_gpu, steps=STEPS, exact=False, **trainer): the architecture's shipped config shrunk to one
    epoch of `steps` steps under tmp_path, on `n_gpu` GPUs (the config key train.py's -d sets). `exact`: an SVAE
    with tests/test_distributed.py's shrink (mean field run to convergence), so that the global parameters after
    one step do not depend on how the batch is split over GPUs. `trainer` updates the trainer section."""

    def make(arch: str, n_gpu: int, steps: int = STEPS, exact: bool = False, **trainer: Any) -> dict:
        name, arch_args, data_args = ARCHS[arch]
        if exact and arch in SVAES:
            arch_args, data_args, _ = SVAE_SHRINKS[Path(name).stem]
        config = shrunk_config(name, arch_args, data_args, mnist_root)
        config["n_gpu"] = n_gpu
        config["trainer"].update(epochs=1, len_epoch=steps, save_dir=str(tmp_path / "saved"), verbosity=0,
                                 tensorboard=False, visualize_every=0, early_stop=0, compile=False)
        config["trainer"].update(trainer)
        return config

    return make


def cpu_copy(value: Any) -> Any:
    """A detached CPU copy of the tensors in a (nested) dict, list or tuple; other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


@pytest.fixture
def trainers(monkeypatch) -> list[Trainer]:
    """The Trainers train.py builds during the test, in order. Each keeps `start`, a CPU copy of its model state
    when training began (after the checkpoint was loaded, when resuming), and `loaded`, what it took from the
    checkpoint: model state, optimizer states, counters and schedule state."""
    built: list[Trainer] = []

    class RecordingTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.start = cpu_copy(self.model_core.state_dict())
            self.loaded: dict | None = None
            built.append(self)

        def load_state_dict(self, state: dict) -> None:
            super().load_state_dict(state)
            self.start = cpu_copy(self.model_core.state_dict())
            self.loaded = {"model": self.start,
                           "optimizers": {name: cpu_copy(opt.state_dict()) for name, opt in self.optimizers.items()},
                           "epoch": self.start_epoch - 1, "global_step": self.global_step,
                           "schedule": self.model_core.schedule_state()}

    monkeypatch.setattr(jobs, "Trainer", RecordingTrainer)
    return built


def train(config: dict) -> jobs.TrainResult:
    """train.py's train() on a new run of `config`."""
    return jobs.train(load_and_check(base=config))


def resume(path: Path, overrides: list[str]) -> jobs.TrainResult:
    """train.py -r PATH --set ...: the checkpoint's run resumed with its own config and the overrides."""
    checkpoint = load_checkpoint(path)
    return jobs.train(load_and_check(base=checkpoint["config"], overrides=overrides), checkpoint, path)


def last_state(run_dir: Path, name: str = "last.pt") -> dict:
    """A checkpoint of the run, its tensors on the CPU (a GPU run saves GPU tensors)."""
    return load_checkpoint(run_dir / "checkpoints" / name)


def untrained_model(config: dict) -> nn.Module:
    """The model a run of `config` starts from (train.py seeds, then builds the data and the model)."""
    seed_everything(config["seed"])
    return build_model(config, build_data(config))


def assert_trained(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], parameters: list[str]) -> None:
    """Every floating tensor of the model state `end` is finite, and every parameter moved from `start`."""
    assert all(v.isfinite().all() for v in end.values() if v.is_floating_point())
    still = [name for name in parameters if torch.equal(end[name].cpu(), start[name].cpu())]
    assert not still, f"parameters that did not move: {still}"


def assert_trainer_trained(trainer: Trainer, run: jobs.TrainResult) -> None:
    """The run's epoch means are finite and its trainer's model trained (`assert_trained`)."""
    assert run.metrics and all(math.isfinite(v) for v in run.metrics.values()), run.metrics
    parameters = [name for name, _ in trainer.model_core.named_parameters()]
    assert_trained(trainer.start, cpu_copy(trainer.model_core.state_dict()), parameters)


def assert_svae_globals_match_one_gpu(config: dict, checkpoint: Path) -> None:
    """The SVI-updated globals (pgm.q_*) in `checkpoint`, written after one step of `config` on 2 GPUs, equal
    those of the same step on one GPU: the natural-gradient statistics are summed over the GPUs before the
    update (float32 networks on differently split batches: close, not bit for bit)."""
    save_dir = Path(config["trainer"]["save_dir"]).parent / "one_gpu"
    one_gpu = train({**config, "n_gpu": 1, "trainer": {**config["trainer"], "save_dir": str(save_dir)}})
    reference = last_state(one_gpu.run_dir, "checkpoint-epoch1.pt")
    updated = {k: v for k, v in reference["model"].items() if k.startswith("pgm.q_")}
    assert len(updated) == SVAE_SHRINKS[config["name"]][2]
    two_gpus = load_checkpoint(checkpoint)
    for key, value in updated.items():
        torch.testing.assert_close(two_gpus["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trains_on_one_gpu(arch, amp, tiny, trainers):
    """STEPS steps on cuda:0 (n_gpu 1), in float32 or under autocast; fp16 with its GradScaler and gradient
    clipping (unscaled before clipping)."""
    clip = {"grad_clip": 1.0} if amp == "fp16" else {}
    run = train(tiny(arch, n_gpu=1, amp=amp, **clip))
    [trainer] = trainers
    assert_trainer_trained(trainer, run)
    state = last_state(run.run_dir)
    assert state["global_step"] == STEPS
    assert all(v.dtype == torch.float32 for k, v in trainer.model_core.named_parameters())  # autocast casts copies
    assert trainer.device == CUDA and next(trainer.model_core.parameters()).device == CUDA
    assert trainer.amp_dtype is AMP_DTYPES.get(amp)
    assert (trainer.scaler is not None) == (amp == "fp16")
    if amp == "fp16":
        assert 0 < state["grad_scaler"]["scale"] < math.inf


@pytest.mark.parametrize("arch", ["GraphLSTMVAE", "GraphVAE"])
def test_trains_compiled_on_one_gpu(arch, tiny, trainers):
    """trainer.compile=true (inductor's GPU kernels) with bf16 autocast, for the architectures whose shipped
    configs compile (the others compile on the CPU in tests/test_compile.py): trains, and the checkpoint has
    the eager module's keys."""
    run = train(tiny(arch, n_gpu=1, amp="bf16", compile=True))
    [trainer] = trainers
    assert trainer.compiled, "the compiler failed and the run fell back to eager: see train.log"
    assert_trainer_trained(trainer, run)
    assert list(last_state(run.run_dir)["model"]) == list(trainer.model_core.state_dict())


#: the SVAE-GMM, SVAE-SLDS and SVAE-HMM mean-field loops read the batch-mean KL after each sweep (when to stop is
#: data-dependent by design); every other step must not wait for the GPU
SYNC_FREE = sorted(set(ARCHS) - {"SVAE-GMM", "SVAE-SLDS", "SVAE-HMM"})


@pytest.mark.parametrize("policy", ["stop", "skip"])
@pytest.mark.parametrize("arch", SYNC_FREE)
def test_training_steps_do_not_synchronize_with_the_gpu(arch, policy, tiny):
    """Steps (forward, finiteness check, backward, optimizer, the statistics hook, metric sums) under
    torch.cuda.set_sync_debug_mode("error"): any host read raises. With nan_policy skip the optimizers are
    fused (they skip a non-finite step on the device)."""
    from benchmarks.common import build_trainer
    from utils.device import move_to

    overrides = [f"trainer.nan_policy={policy}", "trainer.log_every=1000"]
    if policy == "skip":
        overrides += [f"{key}.fused=true" for key in optimizer_args_keys(tiny(arch, n_gpu=1))]
    trainer = build_trainer(load_and_check(base=tiny(arch, n_gpu=1), overrides=overrides), CUDA)
    assert trainer.skip_on_device or policy == "stop"
    trainer.model.train()
    batch = move_to(next(iter(trainer.train_loader)), CUDA)
    trainer._train_step(batch, 1)  # the first step initialises the optimizer state and CUDA libraries
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out, taken = trainer._train_step(batch, 1)
            trainer.tracker.update(out, len(batch["x"]), taken)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(trainer.tracker.result()["loss"])


def optimizer_args_keys(config: dict) -> list[str]:
    """The config key paths of every optimizer's args (one optimizer, or one per parameter group)."""
    optimizer = config["optimizer"]
    if "type" in optimizer:
        return ["optimizer.args"]
    return [f"optimizer.{group}.args" for group in optimizer]


@TWO_GPUS
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trains_with_data_parallel_on_two_gpus(arch, tiny, trainers):
    """n_gpu 2 in one process: DataParallel over cuda:0 and cuda:1, two epochs of one step; an SVAE's globals
    after the first step are one GPU's."""
    config = tiny(arch, n_gpu=2, steps=1, exact=True, epochs=2, save_period=1, keep_last=0)
    run = train(config)
    trainer = trainers[0]
    assert_trainer_trained(trainer, run)
    assert last_state(run.run_dir)["global_step"] == 2
    if arch in SVAES:
        assert_svae_globals_match_one_gpu(config, run.run_dir / "checkpoints" / "checkpoint-epoch1.pt")
    assert isinstance(trainer.model, nn.DataParallel) and trainer.model.device_ids == [0, 1]


@TWO_GPUS
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trains_under_ddp_with_nccl(arch, tiny, tmp_path):
    """torchrun with 2 processes, one GPU each (nccl): two epochs of one step at the global batch of the config;
    rank 0 alone writes the run; an SVAE's globals after the first step are one GPU's."""
    config = tiny(arch, n_gpu=1, steps=1, exact=True, epochs=2, save_period=1, keep_last=0,
                  save_dir=str(tmp_path / "ddp"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    proc = run_cli(*TORCHRUN, "train.py", "-c", str(path), env={"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "INFO"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    [run_dir] = [p for p in (tmp_path / "ddp").glob("*/*") if p.is_dir()]
    state = last_state(run_dir)
    assert state["epoch"] == 2 and state["global_step"] == 2 and len(state["rng"]) == 2
    model = untrained_model(config)
    assert_trained(model.state_dict(), state["model"], [name for name, _ in model.named_parameters()])
    if arch in SVAES:
        assert_svae_globals_match_one_gpu(config, run_dir / "checkpoints" / "checkpoint-epoch1.pt")
    assert "NCCL INFO" in output, "NCCL_DEBUG=INFO printed nothing: the process group is not nccl"


# ---------------------------------------------------------------- test.py
def numbers(value: Any) -> Iterator[float]:
    """Every number in a (nested) JSON value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_test_py_evaluates_a_gpu_checkpoint_on_the_gpu(arch, tiny):
    """A run trained on the GPU, its figures drawn from GPU tensors; `test.py -r CKPT --device cuda` writes
    finite metrics and its figures, with the same keys as `--device cpu` on the same checkpoint."""
    run = train(tiny(arch, n_gpu=1, steps=2, tensorboard=True, visualize_every=1))
    figures = run.run_dir / "figures"
    assert list(figures.glob("val_*.png"))
    checkpoint = str(run.run_dir / "checkpoints" / "last.pt")
    metrics_file = run.run_dir / "test_metrics.json"
    assert test_script.main(["-r", checkpoint, "--device", "cuda", "--iw-samples", "3"]) == 0
    on_gpu = json.loads(metrics_file.read_text())
    assert all(math.isfinite(x) for x in numbers(on_gpu)), on_gpu
    assert list(figures.glob("test_*.png"))
    assert test_script.main(["-r", checkpoint, "--device", "cpu", "--iw-samples", "3"]) == 0
    on_cpu = json.loads(metrics_file.read_text())
    assert on_gpu.keys() == on_cpu.keys() and on_gpu["num_examples"] == on_cpu["num_examples"] > 0


# ---------------------------------------------------------------- resume across devices
def assert_resumed_from(trainer: Trainer, checkpoint: dict) -> None:
    """The trainer holds exactly the checkpoint's model state, optimizer states, counters and schedule state."""
    loaded = trainer.loaded
    assert loaded is not None, "the run was not resumed"
    assert loaded["model"].keys() == checkpoint["model"].keys()
    for key, value in checkpoint["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert loaded["optimizers"].keys() == checkpoint["optimizers"].keys()
    for name, saved in checkpoint["optimizers"].items():
        state = loaded["optimizers"][name]
        assert state["param_groups"] == saved["param_groups"], name
        assert state["state"].keys() == saved["state"].keys(), name
        for index, values in saved["state"].items():
            for key, value in values.items():  # Adam's `step` may change dtype and device (fused): the value stays
                torch.testing.assert_close(torch.as_tensor(state["state"][index][key]), torch.as_tensor(value),
                                           rtol=0, atol=0, check_dtype=False, msg=f"{name} {index} {key}")
    assert (loaded["epoch"], loaded["global_step"]) == (checkpoint["epoch"], checkpoint["global_step"])
    assert loaded["schedule"] == checkpoint["schedule"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_gpu_run_resumes_on_the_cpu_and_back_on_the_gpu(arch, tiny, trainers):
    """Epoch 1 on the GPU, epoch 2 resumed on the CPU (n_gpu 0, as -d cpu), epoch 3 resumed on the GPU again:
    each leg starts from exactly the state the previous one saved, trains, and writes into the same run."""
    run = train(tiny(arch, n_gpu=1, steps=2))
    path = run.run_dir / "checkpoints" / "last.pt"
    for epoch, n_gpu in ((2, 0), (3, 1)):
        checkpoint = load_checkpoint(path)
        resumed = resume(path, [f"trainer.epochs={epoch}", f"n_gpu={n_gpu}"])
        assert resumed.run_dir == run.run_dir
        assert_resumed_from(trainers[-1], checkpoint)
        assert_trainer_trained(trainers[-1], resumed)
        state = last_state(run.run_dir)
        assert (state["epoch"], state["global_step"]) == (epoch, 2 * epoch)
    assert [t.device for t in trainers] == [CUDA, CPU, CUDA]


# ---------------------------------------------------------------- float64 inference: the GPU against the CPU
TOL = dict(rtol=1e-7, atol=1e-9)


@contextlib.contextmanager
def noise_from_the_cpu(seed: int = 0) -> Iterator[None]:
    """torch.randn draws on the CPU from one seeded generator and moves the draw to the device asked for: a
    reparameterised sampler gets the same noise on every device."""
    real = torch.randn
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, dtype=None, device=None, **kwargs):
        return real(*size, generator=gen, dtype=dtype, **kwargs).to(device)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randn", randn)
        yield


def to(value: Any, device: torch.device) -> Any:
    """A tensor, or a NamedTuple of tensors and NamedTuples, on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return type(value)(*(to(v, device) for v in value))


def leaves(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copies of the tensors on `device` that require grad."""
    return [t.detach().clone().to(device).requires_grad_(True) for t in tensors]


def assert_same_on_both(compute: Callable[[torch.device], tuple]) -> None:
    """compute(device) gives the same results on the GPU as on the CPU: float64 tensors within TOL, integer and
    boolean tensors and plain values exactly."""
    on_cpu, on_gpu = compute(CPU), compute(CUDA)
    assert len(on_cpu) == len(on_gpu)
    for i, (a, b) in enumerate(zip(on_cpu, on_gpu)):
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and (a.dtype == torch.float64 or not a.is_floating_point()), (i, a.dtype)
            torch.testing.assert_close(b.detach().cpu(), a.detach(), **TOL, msg=lambda m, i=i: f"result {i}: {m}")
        else:
            assert a == b, (i, a, b)
    assert all(b.device == CUDA for b in on_gpu if isinstance(b, torch.Tensor))


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_kalman_smoother_and_sampler_on_the_gpu_match_the_cpu(method):
    """lds_posterior (filter, smoother, log Z, backward sampler with the same noise) and its gradients."""
    gen = torch.Generator().manual_seed(0)
    prior = random_prior(3, gen)
    nodes = chain_nodes(4, 37, 3, gen)

    def compute(device: torch.device) -> tuple:
        node_J, node_h = leaves(device, *nodes)
        with noise_from_the_cpu():
            post = lds_posterior(to(prior, device), node_J, node_h, num_samples=5, method=method)
        objective = post.log_z.sum() + post.samples.sin().sum() + post.cov.sum() + post.cross_cov.sum()
        return (*post, *torch.autograd.grad(objective, [node_J, node_h]))

    assert_same_on_both(compute)


def test_gmm_mean_field_on_the_gpu_matches_the_cpu():
    """local_meanfield (30 sweeps on both devices: tol 0 never stops early), its gradients, and samples of q(x)
    with the same noise."""
    gen = torch.Generator().manual_seed(1)
    mix = mixtures(*random_globals(6, 3, gen))
    potentials = random_potentials(20, 3, gen)

    def compute(device: torch.device) -> tuple:
        node_J, node_h = leaves(device, *potentials)
        post = local_meanfield(node_J, node_h, to(mix, device), max_iter=30, tol=0.0)
        with noise_from_the_cpu():
            samples = post.gaussian.sample(4, post.mean)
        objective = post.kl.sum() + post.mean.sin().sum() + post.second.sum() + samples.cos().sum()
        return (post.responsibilities, post.mean, post.second, post.kl, post.retried, post.iterations, samples,
                *torch.autograd.grad(objective, [node_J, node_h]))

    assert_same_on_both(compute)


def test_slds_structured_mean_field_on_the_gpu_matches_the_cpu():
    """switching_meanfield (10 sweeps on both devices, then the differentiable sweep with samples of x drawn
    with the same noise): q(x), q(z), the local KL and the gradients."""
    gen = torch.Generator().manual_seed(2)
    potentials = random_switching(3, 2, gen)
    nodes = switching_nodes(4, 9, 2, gen)

    def compute(device: torch.device) -> tuple:
        node_J, node_h = leaves(device, *nodes)
        with noise_from_the_cpu():
            post = switching_meanfield(to(potentials, device), node_J, node_h, num_samples=3, max_iter=10, tol=0.0)
        objective = (post.kl.sum() + post.samples.sin().sum() + post.x.smoothed.cov.sum()
                     + (post.states.marginals * torch.arange(3.0, dtype=node_h.dtype, device=device)).sum())
        return (*post.x.smoothed, *post.states, post.kl, post.retries, post.iterations,
                *torch.autograd.grad(objective, [node_J, node_h]))

    assert_same_on_both(compute)
