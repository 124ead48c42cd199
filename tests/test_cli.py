"""Bad input on the command line: one clear line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import argparse

import pytest
import torch
import yaml

import test as test_script
import train
from tests.conftest import one_line_error, run_cli
from trainer import jobs


@pytest.mark.parametrize("argv, message", [
    (["-c", "configs/missing.yaml"], "config file not found: configs/missing.yaml"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "arch.type=Nope"], "unknown architecture 'Nope'"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "data_loader.type=Nope"], "unknown data loader 'Nope'"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "optimizer.type=Nope"], "unknown optimizer 'Nope'"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "lr_scheduler.type=Nope"], "unknown lr scheduler 'Nope'"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "trainer.nope=1"], "unknown config key 'trainer.nope'"),
    (["-c", "configs/vae_pinwheel.yaml", "--epochs", "0"], "'trainer.epochs' must be >= 1"),
    (["-c", "configs/vae_pinwheel.yaml", "--set", "seed=x"], "'seed' must be int"),
    (["-r", "nowhere/last.pt"], "checkpoint not found: nowhere/last.pt"),
    ([], "give a config (-c CONFIG) or a checkpoint"),
    (["-c", "configs/vae_mnist.yaml", "--set", "data_loader.args.root=/nonexistent/data", "--set",
      "data_loader.args.download=false"], "MNIST train split not found: looked for /nonexistent/data/MNIST/raw/"),
])
def test_train_bad_input(argv, message, capsys):
    assert train.main(argv) == 2
    assert message in one_line_error(capsys.readouterr().err)


def test_resume_flag_without_checkpoint(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["-r"])
    assert info.value.code == 2
    assert "expected one argument" in one_line_error(capsys.readouterr().err)


def test_bad_checkpoints(tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    assert train.main(["-r", str(truncated)]) == 2
    assert "cannot be read (truncated" in one_line_error(capsys.readouterr().err)
    assert test_script.main(["-r", str(truncated)]) == 2
    assert "cannot be read" in one_line_error(capsys.readouterr().err)
    assert test_script.main(["-r", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in one_line_error(capsys.readouterr().err)


def test_cli_subprocess_reports_one_line(tmp_path):
    """The real entry point, as a user runs it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: {type: VAE\n")
    proc = run_cli("train.py", "-c", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: invalid YAML") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("test.py")
    assert proc.returncode == 2 and "-r/--resume" in proc.stderr


def test_finetune_from_a_checkpoint_of_another_architecture(regression_config, tmp_path, capsys):
    from trainer.components import load_and_check

    run = jobs.train(load_and_check(base=regression_config))
    code = train.main(["-r", str(run.run_dir / "checkpoints" / "last.pt"), "-c", "configs/vae_pinwheel.yaml"])
    assert code == 2
    assert "is from architecture 'LinearTest', the config asks for 'VAE'" in one_line_error(capsys.readouterr().err)


PER_GROUP_CONFIGS = ["configs/graph_vae.yaml", "configs/graph_lstm_vae.yaml", "configs/recurrent_graph_vae.yaml",
                     "configs/recurrent_graph_vae_strokes.yaml", "configs/mnist9k/graph_vae.yaml",
                     "configs/mnist9k/graph_lstm_vae.yaml"]


@pytest.mark.parametrize("path", PER_GROUP_CONFIGS)
def test_lr_flag_sets_every_group_of_a_per_group_optimizer(path):
    args = argparse.Namespace(config=path, resume=None, set=[], lr=0.25, bs=None, epochs=None, seed=None)
    config, _ = train.config_from_args(args)
    groups = config["optimizer"]
    assert "type" not in groups and len(groups) >= 2
    assert {name: spec["args"]["lr"] for name, spec in groups.items()} == dict.fromkeys(groups, 0.25)


def test_lr_flag_trains_every_group_at_that_rate(regression_config, tmp_path):
    """End to end, on a per-group config: both optimizers run at --lr, and a resume keeps it."""
    regression_config["arch"] = {"type": "HookProbe", "args": {}}
    regression_config["optimizer"] = {"weight": {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.5}},
                                      "bias": {"type": "Adam"}}
    path = tmp_path / "groups.yaml"
    path.write_text(yaml.safe_dump(regression_config))
    assert train.main(["-c", str(path), "--lr", "0.125", "--epochs", "1"]) == 0
    (run_dir,) = (tmp_path / "saved" / "regression").iterdir()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {name: opt["param_groups"][0]["lr"] for name, opt in state["optimizers"].items()} == \
        {"weight": 0.125, "bias": 0.125}
    assert state["optimizers"]["weight"]["param_groups"][0]["momentum"] == 0.5  # other args kept
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["optimizer"]
    assert saved == {"weight": {"type": "SGD", "args": {"lr": 0.125, "momentum": 0.5}},
                     "bias": {"type": "Adam", "args": {"lr": 0.125}}}


def test_lr_flag_on_a_single_optimizer_and_in_help(capsys):
    args = argparse.Namespace(config="configs/vae_pinwheel.yaml", resume=None, set=["optimizer.args.lr=0.9"],
                              lr=0.5, bs=None, epochs=None, seed=None)
    assert train.config_from_args(args)[0]["optimizer"]["args"]["lr"] == 0.5  # --lr wins over --set
    with pytest.raises(SystemExit):
        train.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "learning rate of every optimizer" in help_text and "optimizer.<group>.args.lr" in help_text


def test_test_table_prints_list_metrics_compactly():
    table = jobs.format_table({
        "elbo": -3.14159, "num_examples": 30, "kl_nodes": [0.44, 0.0, 0.40123456, 0.78],
        "edge_probs": [[0.0, 0.9512, 0.3], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]],
        "adjacency": [[0, 1], [0, 0]], "dynamics_eigenvalue_moduli": [0.999871, 0.98],
        "predicted_sequences": [[[0.1] * 10] * 10] * 3, "checkpoint": "/runs/x/model_best.pt"})
    assert table.splitlines() == [
        "elbo                        -3.1416",
        "num_examples                30",
        "kl_nodes                    [0.44   0.     0.4012 0.78  ]",
        "edge_probs                  [[0.     0.9512 0.3   ]",
        "                             [0.     0.     0.5   ]",
        "                             [0.     0.     0.    ]]",
        "adjacency                   [[0 1]",
        "                             [0 0]]",
        "dynamics_eigenvalue_moduli  [0.9999 0.98  ]",
        "predicted_sequences         array of shape (3, 10, 10) (see test_metrics.json)",
        "checkpoint                  /runs/x/model_best.pt",
    ]


def test_test_cli_prints_the_list_metrics_of_a_graph_vae(mnist_root, tmp_path, capsys):
    """The real table of a (tiny) GraphVAE run shows its node KLs and its learned graph."""
    overrides = [f"data_loader.args.root={mnist_root}", "data_loader.args.download=false",
                 "data_loader.args.validation_split=10", "data_loader.args.num_workers=0",
                 "arch.args.hidden_dims=[16]", "arch.args.head_hidden_dims=[]", "arch.args.num_nodes=3",
                 "arch.args.node_dim=2", "trainer.epochs=1", f"trainer.save_dir={tmp_path}", "trainer.verbosity=0",
                 "trainer.tensorboard=false", "trainer.compile=false", "n_gpu=0"]
    assert train.main(["-c", "configs/graph_vae.yaml", *[a for o in overrides for a in ("--set", o)]]) == 0
    (run_dir,) = (tmp_path / "graph_vae").iterdir()
    capsys.readouterr()
    assert test_script.main(["-r", str(run_dir / "checkpoints" / "model_best.pt"), "--iw-samples", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: i for i, line in enumerate(lines) if line and not line.startswith(" ")}
    assert {"kl_nodes", "edge_probs", "adjacency", "elbo", "iw_nll"} <= set(rows)
    assert lines[rows["kl_nodes"]].count(" ") > 3 and "[" in lines[rows["kl_nodes"]]
    assert lines[rows["edge_probs"] + 1].strip().startswith("[") and lines[rows["edge_probs"] + 2].strip().endswith("]]")
