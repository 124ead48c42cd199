"""The Trainer: checkpoints, early stopping, epochs, non-finite losses, hooks, groups, TensorBoard."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import final_state
from trainer.components import load_and_check
from trainer.jobs import RunOptions, train
from trainer.optim import skips_step_on_found_inf, step_with_found_inf
from utils.checkpoint import load_checkpoint
from utils.errors import NonFiniteLossError
from utils.run_dir import new_run_dir


def _run(config: dict, *overrides: str):
    return train(load_and_check(base=config, overrides=list(overrides)))


def test_checkpoint_files_and_contents(regression_config):
    run = _run(regression_config, "trainer.epochs=5", "trainer.save_period=2", "trainer.keep_last=1")
    ckpt = run.run_dir / "checkpoints"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["checkpoint-epoch4.pt", "last.pt", "model_best.pt"]  # epoch 2 pruned by keep_last
    state = torch.load(ckpt / "last.pt", weights_only=True)
    for key in ("model", "optimizers", "schedulers", "epoch", "global_step", "monitor_best", "not_improved_count",
                "schedule", "rng", "config", "grad_scaler"):
        assert key in state, key
    assert state["epoch"] == 5 and state["global_step"] == 20
    assert isinstance(state["config"], dict) and state["config"]["trainer"]["epochs"] == 5
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert not list(ckpt.glob(".*tmp*")), "temporary files are cleaned up"


def test_model_best_is_written_on_epochs_that_are_not_save_epochs(regression_config):
    run = _run(regression_config, "trainer.epochs=3", "trainer.save_period=10")
    best = load_checkpoint(run.run_dir / "checkpoints" / "model_best.pt")
    assert best["epoch"] == 3  # the loss falls every epoch
    assert not list((run.run_dir / "checkpoints").glob("checkpoint-epoch*.pt"))


def test_early_stopping_counts_exactly(regression_config):
    """lr 0: the loss never changes after epoch 1, so exactly k epochs without improvement follow."""
    run = _run(regression_config, "trainer.epochs=20", "trainer.early_stop=3", "optimizer.args.lr=0.0",
               "data_loader.args.shuffle=false")
    state = final_state(run.run_dir)
    assert state["epoch"] == 1 + 3 and state["not_improved_count"] == 3
    assert load_checkpoint(run.run_dir / "checkpoints" / "model_best.pt")["epoch"] == 1


def test_after_epoch_sees_every_epoch_and_can_stop_after_its_checkpoints(regression_config, tmp_path):
    """RunOptions (sweep.py's hooks): the epoch callback gets each epoch's log before that epoch's
    checkpoints are written; True stops training once they are; the run lands in the folder asked for."""
    seen = []

    def after_epoch(epoch: int, log: dict) -> bool:
        seen.append((epoch, sorted(log), (run_dir / "checkpoints" / "last.pt").exists()))
        return epoch == 2

    run_dir = tmp_path / "sweep" / "run-a"
    config = load_and_check(base=regression_config, overrides=["trainer.epochs=5", "trainer.verbosity=1"])
    run = train(config, options=RunOptions(run_dir=run_dir, after_epoch=after_epoch, console=False))
    assert run.run_dir == run_dir
    assert seen == [(1, ["loss", "mse"], False), (2, ["loss", "mse"], True)]
    assert final_state(run_dir)["epoch"] == 2
    assert "stopped after epoch 2" in (run_dir / "train.log").read_text()


def test_min_delta_and_max_mode(regression_config):
    run = _run(regression_config, "trainer.epochs=20", "trainer.early_stop=2", "trainer.min_delta=1e9")
    assert final_state(run.run_dir)["epoch"] == 3  # epoch 1 improves on inf, then never by 1e9
    run = _run(regression_config, "trainer.epochs=20", "trainer.early_stop=2", "trainer.monitor=max loss")
    assert final_state(run.run_dir)["epoch"] == 3  # the loss falls: never an improvement for 'max'


def test_len_epoch_runs_exactly_that_many_steps(regression_config):
    run = _run(regression_config, "trainer.epochs=2", "trainer.len_epoch=7")  # 4 batches per pass
    state = final_state(run.run_dir)
    assert state["global_step"] == 14


def test_monitor_of_a_metric_that_is_not_logged(regression_config):
    with pytest.raises(Exception, match="val_\\* needs a validation set: data_loader.args.validation_split"):
        _run(regression_config, "trainer.monitor=min val_loss")


#: SGD cannot skip a step on the device (the loss is checked on the host for nan_policy=skip); fused Adam can
OPTIMIZERS = {"host": {"type": "SGD", "args": {"lr": 0.05}},
              "device": {"type": "Adam", "args": {"lr": 0.05, "fused": True}}}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(regression_config, optimizer):
    regression_config["arch"]["args"]["nan_at_call"] = 10  # epoch 3 (4 steps per epoch)
    regression_config["optimizer"] = OPTIMIZERS[optimizer]
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* epoch 3, step 10.*last good checkpoint"):
        _run(regression_config)  # log_every 10: read back at step 10; also at the epoch's end
    [last] = Path(regression_config["trainer"]["save_dir"]).glob("*/*/checkpoints/last.pt")
    state = load_checkpoint(last)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_policy_stop_reads_the_device_record_at_the_epoch_end(regression_config):
    """The first non-finite step of an epoch stops the run in that epoch even when no log step follows it."""
    regression_config["arch"]["args"]["nan_at_call"] = 5  # epoch 2, step 5; the next read: step 8 (epoch end)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 5"):
        _run(regression_config, "trainer.log_every=1000")
    [last] = Path(regression_config["trainer"]["save_dir"]).glob("*/*/checkpoints/last.pt")
    assert load_checkpoint(last)["epoch"] == 1


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_skipped_step_changes_no_weight_and_no_optimizer_state(regression_config, optimizer):
    """Two steps, the second non-finite and skipped, leave exactly the state of one step: weights,
    optimizer state (Adam's moments and step count) and the SVI-style statistics hook."""
    regression_config["optimizer"] = OPTIMIZERS[optimizer]
    one = final_state(_run(regression_config, "trainer.epochs=1", "trainer.len_epoch=1").run_dir)
    regression_config["arch"]["args"]["nan_at_call"] = 2
    regression_config["trainer"]["save_dir"] += "2"
    two = final_state(_run(regression_config, "trainer.epochs=1", "trainer.len_epoch=2",
                           "trainer.nan_policy=skip").run_dir)
    assert two["global_step"] == 2
    for key, value in one["model"].items():
        assert torch.equal(two["model"][key], value), key
    assert _flat(two["optimizers"]) == _flat(one["optimizers"])


def _flat(state: dict) -> list:
    """An optimizer state dict as a comparable list (tensors as lists)."""
    return [(k, _flat(v) if isinstance(v, dict) else v.tolist() if torch.is_tensor(v) else v)
            for k, v in sorted(state.items(), key=lambda item: str(item[0]))]


def test_metric_tracker_weights_by_examples_and_leaves_out_steps_not_taken():
    from trainer.metric_tracker import MetricTracker

    tracker = MetricTracker()
    tracker.update({"loss": torch.tensor(1.0), "kl": torch.tensor(4.0)}, 2)
    tracker.update({"loss": torch.tensor(math.nan), "kl": torch.tensor(0.0)}, 3, torch.tensor(False))
    tracker.update({"loss": torch.tensor(3.0), "kl": torch.tensor(1.0)}, 6, torch.tensor(True))
    tracker.update({"loss": torch.tensor(2.0)}, 4)  # another set of keys (one count: models keep theirs)
    assert tracker.result() == pytest.approx({"loss": (2 + 18 + 8) / 12, "kl": (8 + 6) / 12})


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts calls that read a tensor back to the host (a synchronisation on CUDA), except the DataLoader's
    reads of its own CPU tensors (seeds, permutations)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS and "torch/utils/data" not in sys._getframe(1).f_code.co_filename:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_training_steps_read_nothing_back_to_the_host(regression_config, policy):
    """With an optimizer that skips on the device, an epoch reads back twice (the non-finite record and the
    metric sums) however many steps it has, a non-finite step included; the host-checked SGD reads each step."""
    from benchmarks.common import build_trainer

    def epoch_reads(optimizer: str, steps: int) -> int:
        config = dict(regression_config, optimizer=OPTIMIZERS[optimizer])
        config["arch"]["args"]["nan_at_call"] = 2
        trainer = build_trainer(load_and_check(base=config, overrides=[
            f"trainer.nan_policy={policy}", "trainer.log_every=1000", f"trainer.len_epoch={steps}"]),
            torch.device("cpu"))
        with HostReads() as mode:
            try:
                trainer.train_epoch(1)
            except NonFiniteLossError:
                assert policy == "stop"
        return len(mode.reads)

    assert epoch_reads("device", 3) == epoch_reads("device", 8) == (1 if policy == "stop" else 2)
    if policy == "skip":
        assert epoch_reads("host", 8) - epoch_reads("host", 3) == 5


def test_non_finite_loss_is_skipped_with_nan_policy_skip(regression_config):
    regression_config["arch"]["args"]["nan_at_call"] = 2
    run = _run(regression_config, "trainer.nan_policy=skip")
    state = final_state(run.run_dir)
    assert state["global_step"] == 12
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert math.isfinite(run.metrics["loss"])


def test_a_skipped_step_never_applies_its_statistics(regression_config):
    config = dict(regression_config, arch={"type": "HookProbe", "args": {"nan_at_call": 2}})
    state = final_state(_run(config, "trainer.nan_policy=skip").run_dir)
    assert state["global_step"] == 12
    assert int(state["model"]["optimizer_steps"]) == 11 and float(state["model"]["examples_applied"]) == 11 * 16


def test_hooks_parameter_groups_and_schedule_state(regression_config):
    config = dict(regression_config, arch={"type": "HookProbe", "args": {"tau": 1.0}})
    config["optimizer"] = {
        "weight": {"type": "SGD", "args": {"lr": 0.05},
                   "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}},
        "bias": {"type": "Adam", "args": {"lr": 0.01}},
    }
    run = _run(config, "trainer.epochs=3")
    state = final_state(run.run_dir)
    assert set(state["optimizers"]) == {"weight", "bias"} and set(state["schedulers"]) == {"weight"}
    assert int(state["model"]["optimizer_steps"]) == 12  # after_optimizer_step once per step
    assert float(state["model"]["examples_applied"]) == 12 * 16  # with the statistics of its step
    assert state["schedule"] == {"tau": 0.125}  # set_epochs_done once per epoch, saved
    assert state["optimizers"]["weight"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5 ** 3)
    assert "exp_avg" in state["optimizers"]["bias"]["state"][0]

    # resume restores the schedule state: 2 more epochs halve tau twice more
    path = run.run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    train(load_and_check(base=checkpoint["config"], overrides=["trainer.epochs=5"]), checkpoint, path)
    assert final_state(run.run_dir)["schedule"] == {"tau": 0.125 / 4}


def test_parameter_groups_must_match_the_model(regression_config):
    config = dict(regression_config, arch={"type": "HookProbe", "args": {}})
    config["optimizer"] = {"weights": {"type": "SGD", "args": {"lr": 0.1}}}
    with pytest.raises(Exception, match="has groups \\['bias', 'weight'\\]"):
        _run(config)


def test_gradient_clipping_bounds_the_update(regression_config):
    """With lr 1 and clip c, one SGD step moves the parameters by a vector of norm <= c."""
    config = load_and_check(base=regression_config, overrides=[
        "trainer.epochs=1", "trainer.len_epoch=1", "optimizer.args.lr=1.0", "trainer.grad_clip=0.01"])
    torch.manual_seed(config["seed"])
    from model.registry import ARCHITECTURES

    model = ARCHITECTURES.build(config["arch"], "arch", data_shape=(4,))
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    run = train(config)
    moved = torch.cat([(final_state(run.run_dir)["model"][k] - initial[k]).flatten() for k in initial])
    assert 0 < moved.norm() <= 0.01 + 1e-6


def test_amp_on_cpu_warns_and_trains_in_full_precision(regression_config):
    """Every forward pass (training and validation) runs without autocast and in float32: the probe counts
    the calls that ran with autocast on or produced a lower-precision output."""
    from tests.fakes import PrecisionProbe

    probe = PrecisionProbe((4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the probe sees autocast when it is on
        probe({"x": torch.randn(3, 4), "y": torch.randn(3, 1)})
    assert int(probe.reduced_precision_forwards) == 1

    config = dict(regression_config, arch={"type": "PrecisionProbe", "args": {}})
    run = _run(config, "trainer.amp=bf16", "trainer.epochs=2", "trainer.verbosity=1",
               "data_loader.args.validation_split=16")
    assert "needs CUDA" in (run.run_dir / "train.log").read_text()
    state = final_state(run.run_dir)["model"]
    assert int(state["forwards"]) == 2 * (3 + 1)  # 48 training points in batches of 16, 16 validation points
    assert int(state["reduced_precision_forwards"]) == 0
    assert all(v.dtype == torch.float32 for k, v in state.items() if k.startswith("linear."))


def test_run_folders_never_collide(tmp_path):
    """Run ids are MMDD-HHMMSS; runs started in the same second get -2, -3, ..."""
    paths = [new_run_dir(tmp_path, "x") for _ in range(50)]
    assert len(set(paths)) == 50 and all(p.parent == tmp_path / "x" for p in paths)
    first = paths[0].name
    assert len(first) == len("1207-103452") and first[4] == "-" and first.replace("-", "").isdigit()
    same_second = [p.name for p in paths if p.name.startswith(first)]
    assert same_second[:3] == [first, f"{first}-2", f"{first}-3"][:len(same_second[:3])]


def test_run_folder_contents(regression_config):
    run = _run(regression_config, "trainer.epochs=1", "trainer.verbosity=1")
    env = json.loads((run.run_dir / "environment.json").read_text())
    assert {"python", "torch", "torchvision", "git_commit"} <= set(env)
    assert "epoch 1/1" in (run.run_dir / "train.log").read_text()
    assert (run.run_dir / "config.yaml").exists()


def test_tensorboard_tags(pinwheel_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pinwheel_config["trainer"].update(tensorboard=True, log_every=1, visualize_every=1)
    run = _run(pinwheel_config, "trainer.epochs=2")
    train_events = EventAccumulator(str(run.run_dir / "train")).Reload()
    val_events = EventAccumulator(str(run.run_dir / "val")).Reload()
    run_events = EventAccumulator(str(run.run_dir)).Reload()  # the run folder itself: run-level data
    scalars = set(train_events.Tags()["scalars"])
    assert {"epoch/loss_per_point", "epoch/kl_per_point"} <= scalars and not any(tag.startswith("step/") for tag in scalars)
    assert {"epoch/loss_per_point", "epoch/elbo_per_point"} <= set(val_events.Tags()["scalars"])
    assert "val/data_vs_samples" in val_events.Tags()["images"]  # a matplotlib figure for 2-D data, val run
    assert any(tag.startswith("config") for tag in run_events.Tags()["tensors"])
    steps = [e.step for e in train_events.Scalars("epoch/loss_per_point")]
    assert steps == [e.step for e in val_events.Scalars("epoch/loss_per_point")] == [8, 16]  # shared global-step axis
    run_scalars = set(run_events.Tags()["scalars"])
    assert {"lr/all", "schedule/kl_weight", "best/val_loss"} <= run_scalars
    lr = pinwheel_config["optimizer"]["args"]["lr"]
    assert [e.value for e in run_events.Scalars("lr/all")] == pytest.approx([0.7 * lr, 0.49 * lr])  # StepLR, stepped
    assert [e.value for e in run_events.Scalars("schedule/kl_weight")] == [0.0, 0.5]  # warm-up over 2 epochs
    assert not any(tag.startswith("hparam") for tag in scalars | run_scalars)


def test_steps_are_logged_with_log_steps(pinwheel_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pinwheel_config["trainer"].update(tensorboard=True, log_every=1, log_steps=True)
    run = _run(pinwheel_config, "trainer.epochs=1")
    steps = EventAccumulator(str(run.run_dir / "train")).Reload().Scalars("step/loss")
    assert [e.step for e in steps] == list(range(1, 9))


def test_reduce_lr_on_plateau_steps_on_the_monitored_metric(regression_config):
    """ReduceLROnPlateau (patience 2, factor 1/2) gets the monitored `score`, not the loss (which falls every
    epoch): the LR stays while the score improves and halves on the third epoch in a row without improvement."""
    scores = [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0]
    config = dict(regression_config, arch={"type": "ScriptedMetric", "args": {"scores": scores}})
    config["lr_scheduler"] = {"type": "ReduceLROnPlateau", "args": {"mode": "min", "factor": 0.5, "patience": 2}}
    run = _run(config, f"trainer.epochs={len(scores)}", "trainer.monitor=min score", "trainer.save_period=1",
               "trainer.keep_last=0", "optimizer.args.lr=0.1")
    checkpoints = run.run_dir / "checkpoints"
    lrs = [load_checkpoint(checkpoints / f"checkpoint-epoch{e}.pt")["optimizers"]["all"]["param_groups"][0]["lr"]
           for e in range(1, len(scores) + 1)]
    # improvements at epochs 1, 2 and 6; epochs 3-5 and 7-9 are three in a row without one
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025])


@pytest.mark.parametrize("histograms", [True, False])
def test_parameter_histograms(regression_config, histograms):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(regression_config, "trainer.epochs=2", "trainer.tensorboard=true", f"trainer.histograms={histograms}")
    events = EventAccumulator(str(run.run_dir / "train"), size_guidance={"histograms": 0}).Reload()
    tags = set(events.Tags()["histograms"])
    if not histograms:
        assert tags == set()
        return
    assert tags == {"params/linear.weight", "params/linear.bias"}
    state = final_state(run.run_dir)["model"]
    for name in ("linear.weight", "linear.bias"):
        [first, last] = events.Histograms(f"params/{name}")
        assert (first.step, last.step) == (4, 8)  # one per epoch, on the global-step axis
        values = state[name]
        assert last.histogram_value.num == values.numel()
        assert last.histogram_value.min == pytest.approx(float(values.min()))
        assert last.histogram_value.max == pytest.approx(float(values.max()))


def test_a_fused_optimizer_skips_on_found_inf_and_fails_clearly_without_torchs_private_flag(monkeypatch):
    """The Trainer's one use of torch's private GradScaler protocol: a fused optimizer steps nothing where
    `found_inf` is 1; a torch whose fused optimizer lacks `_step_supports_amp_scaling` is a clear error."""
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    fused = torch.optim.Adam([param], lr=0.1, fused=True)
    assert skips_step_on_found_inf(fused) and not skips_step_on_found_inf(torch.optim.Adam([param], lr=0.1))
    step_with_found_inf(fused, torch.ones(()))
    assert torch.equal(param.detach(), torch.ones(2)) and not hasattr(fused, "found_inf")
    step_with_found_inf(fused, torch.zeros(()))
    assert not torch.equal(param.detach(), torch.ones(2))
    monkeypatch.delattr(fused, "_step_supports_amp_scaling")
    expected = rf"torch {re.escape(torch.__version__)}: .*Adam has no attribute '_step_supports_amp_scaling'"
    with pytest.raises(RuntimeError, match=expected):
        skips_step_on_found_inf(fused)
