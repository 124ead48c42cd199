"""Bad input on the command line: one clear line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import pytest

import test as test_script
import train
from tests.conftest import run_cli


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


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
    assert message in _one_line_error(capsys)


def test_resume_flag_without_checkpoint(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["-r"])
    assert info.value.code == 2
    assert "expected one argument" in _one_line_error(capsys)


def test_bad_checkpoints(tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    assert train.main(["-r", str(truncated)]) == 2
    assert "cannot be read (truncated" in _one_line_error(capsys)
    assert test_script.main(["-r", str(truncated)]) == 2
    assert "cannot be read" in _one_line_error(capsys)
    assert test_script.main(["-r", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in _one_line_error(capsys)


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
    from trainer.build import load_and_check

    run = train.train(load_and_check(base=regression_config))
    code = train.main(["-r", str(run.run_dir / "checkpoints" / "last.pt"), "-c", "configs/vae_pinwheel.yaml"])
    assert code == 2
    assert "is from architecture 'LinearTest', the config asks for 'VAE'" in _one_line_error(capsys)
