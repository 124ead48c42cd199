"""Exact resume, extension, fine-tuning and SIGKILL safety."""
from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, final_state
from trainer.components import load_and_check
from trainer.jobs import train
from utils.checkpoint import load_checkpoint


def _assert_same_training_state(a: dict, b: dict) -> None:
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            for k in sa[idx]:
                assert torch.equal(torch.as_tensor(sa[idx][k]), torch.as_tensor(sb[idx][k])), (name, idx, k)
    assert a["schedulers"] == b["schedulers"]
    assert a["schedule"] == b["schedule"]
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])


def test_resume_is_exact(pinwheel_config):
    """4 epochs == 2 epochs + resume for 2 more (shuffling, dropout, sampling, LR scheduler, KL warm-up)."""
    config = load_and_check(base=pinwheel_config, overrides=["trainer.epochs=4"])
    full = train(config)
    half = train(load_and_check(base=pinwheel_config, overrides=["trainer.epochs=2"]))
    checkpoint_path = half.run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(checkpoint_path)
    resumed_config = load_and_check(base=checkpoint["config"], overrides=["trainer.epochs=4"])
    resumed = train(resumed_config, checkpoint, checkpoint_path)
    assert resumed.run_dir == half.run_dir, "a resumed run writes into the folder it resumes from"
    _assert_same_training_state(final_state(full.run_dir), final_state(resumed.run_dir))
    assert full.metrics == resumed.metrics
    assert (half.run_dir / "checkpoints" / "checkpoint-epoch4.pt").exists()


def test_resume_of_a_finished_run_without_extension_trains_nothing(regression_config):
    run = train(load_and_check(base=regression_config))
    path = run.run_dir / "checkpoints" / "last.pt"
    before = path.read_bytes()
    checkpoint = load_checkpoint(path)
    result = train(load_and_check(base=checkpoint["config"]), checkpoint, path)
    assert result.metrics == {} and path.read_bytes() == before


def test_finetune_takes_weights_and_starts_a_new_run(regression_config):
    run = train(load_and_check(base=regression_config))
    path = run.run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    new_config = load_and_check(base=regression_config, overrides=["trainer.epochs=1", "optimizer.args.lr=0.0"])
    tuned = train(new_config, checkpoint, path, finetune=True)
    assert tuned.run_dir != run.run_dir
    state = final_state(tuned.run_dir)
    assert state["epoch"] == 1 and state["global_step"] == 4  # fresh counters
    for key, value in checkpoint["model"].items():  # lr 0: the weights are exactly the checkpoint's
        assert torch.equal(state["model"][key], value)


@pytest.mark.integration
def test_sigkill_never_corrupts_and_resume_matches(regression_config, tmp_path):
    """Kill training right after the first checkpoint appears; resuming gives the uninterrupted result."""
    regression_config["data_loader"]["args"]["num_examples"] = 4096
    regression_config["trainer"]["epochs"] = 6
    reference = train(load_and_check(base=regression_config))

    config = copy.deepcopy(regression_config)
    config["trainer"]["save_dir"] = str(tmp_path / "killed")
    config_path = tmp_path / "config.json"
    config_path.write_text(__import__("json").dumps(config))
    proc = subprocess.Popen([sys.executable, "tests/fakes.py", "-c", str(config_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    found = []
    while time.time() < deadline and not found and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/*/checkpoints/last.pt"))
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert found, "no checkpoint appeared"
    checkpoint = load_checkpoint(found[0])  # loads: never half-written
    assert 1 <= checkpoint["epoch"] < 6, "the kill must interrupt the run"
    resumed = train(load_and_check(base=checkpoint["config"]), checkpoint, found[0])
    _assert_same_training_state(final_state(reference.run_dir), final_state(resumed.run_dir))
