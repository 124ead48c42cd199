"""DistributedDataParallel under torchrun on CPU (gloo, 2 processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, final_state, run_cli
from tests.postgres import free_port
from tests.shrinks import DDP_UPDATED, shrink_args, tiny_config
from trainer.components import load_and_check
from trainer.jobs import train

pytestmark = pytest.mark.integration  # every test launches torchrun (2 processes): python -m pytest -m integration

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
ENV = {"OMP_NUM_THREADS": "1"}


def _torchrun(*args: str):
    return _torchrun_ok(run_cli(*TORCHRUN, "tests/fakes.py", *args, env=ENV))


def _torchrun_ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _only_run_dir(save_dir: Path) -> Path:
    [run_dir] = [p for p in save_dir.glob("*/*") if p.is_dir()]
    return run_dir


def test_ddp_matches_one_process_with_the_same_global_batch(regression_config, tmp_path):
    single = train(load_and_check(base=regression_config))
    config = dict(regression_config, trainer=dict(regression_config["trainer"], save_dir=str(tmp_path / "ddp")))
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    _torchrun("-c", str(path))
    ddp_state = final_state(_only_run_dir(tmp_path / "ddp"))  # rank 0 alone writes one run folder
    single_state = final_state(single.run_dir)
    assert ddp_state["global_step"] == single_state["global_step"] == 12
    for key, value in single_state["model"].items():
        assert torch.allclose(ddp_state["model"][key], value, atol=1e-5), key
    assert len(ddp_state["rng"]) == 2  # each rank's RNG streams are saved


def test_a_real_architecture_trains_and_resumes_under_ddp(pinwheel_config, tmp_path):
    pinwheel_config["trainer"].update(save_dir=str(tmp_path / "ddp"), epochs=2, tensorboard=True)
    path = tmp_path / "vae.json"
    path.write_text(json.dumps(pinwheel_config))
    proc = _torchrun("-c", str(path))
    assert proc.stdout.count("epoch 2/2") == 0  # verbosity 0: nothing on the console
    run_dir = _only_run_dir(tmp_path / "ddp")
    assert final_state(run_dir)["epoch"] == 2
    _torchrun("-r", str(run_dir / "checkpoints" / "last.pt"), "--set", "trainer.epochs=3")
    state = final_state(run_dir)
    assert state["epoch"] == 3 and state["global_step"] == 3 * 8  # 80 training points, global batch 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert _only_run_dir(tmp_path / "ddp") == run_dir


#: config stem -> (arch args, data args, number of SVI-updated buffers): tests/shrinks.py's rows with the "ddp"
#: variant (tests/test_cuda.py reads this too)
SVAE_SHRINKS = {name: (*shrink_args(name, "ddp")[1:], DDP_UPDATED[name]) for name in DDP_UPDATED}


@pytest.mark.parametrize("name", sorted(SVAE_SHRINKS))
def test_svae_natural_gradient_step_all_reduces_its_statistics(name, tmp_path):
    """After one step, the SVI-updated globals under DDP (2 ranks x 5 examples) equal one process's
    (10 examples): the statistics are summed over ranks before the update."""
    num_updated = SVAE_SHRINKS[name][2]
    config = tiny_config(name, "ddp", epochs=1, len_epoch=1, save_dir=tmp_path / "single", monitor="off")
    single = final_state(train(load_and_check(base=config)).run_dir)
    config["trainer"]["save_dir"] = str(tmp_path / "ddp")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    _torchrun("-c", str(path))
    ddp = final_state(_only_run_dir(tmp_path / "ddp"))
    updated = {k: v for k, v in single["model"].items() if k.startswith("pgm.q_")}
    assert len(updated) == num_updated
    for key, value in updated.items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-9, atol=1e-9, msg=key)


def test_two_nodes_train_as_two_processes_on_one_node(pinwheel_config, tmp_path):
    """The README's multi-node command, two machines played on 127.0.0.1: two torchrun launches with --nnodes 2
    --nproc_per_node 1 meeting at a c10d rendezvous (gloo) end their steps with the weights of one launch of
    2 processes on one node."""
    pinwheel_config["trainer"].update(epochs=2)
    path = tmp_path / "vae.json"
    path.write_text(json.dumps(pinwheel_config))
    run = ("train.py", "-c", str(path), "--set")
    _torchrun_ok(run_cli(*TORCHRUN, *run, f"trainer.save_dir={tmp_path / 'one'}", env=ENV))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
                               *run, f"trainer.save_dir={tmp_path / 'two'}"], cwd=ROOT, text=True,
                              env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-3000:] for output in outputs)
    one, two = final_state(_only_run_dir(tmp_path / "one")), final_state(_only_run_dir(tmp_path / "two"))
    assert one["global_step"] == two["global_step"] == 2 * 8  # 80 training points, global batch 10
    for key, value in one["model"].items():
        assert torch.equal(two["model"][key], value), key
