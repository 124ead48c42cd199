"""Start-up and output errors: one line naming the path, exit status 2, nothing saved lost.

Non-text configs, unusable save_dirs, a disk that fills while checkpoints, logs or TensorBoard
events are written (simulated, and on a real small file system where one can be mounted), lying
-d flags, and failed starts that must not leave run folders behind.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import train
from base.base_trainer import BaseTrainer, TrainerContext
from tests.conftest import final_state, one_line_error, run_cli
from trainer import jobs
from trainer.components import load_and_check
from utils import checkpoint as checkpoint_module
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo
from utils.errors import ConfigError, OutputWriteError


def write_config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def mount_tmpfs(path: Path, options: str) -> bool:
    """Make `path` and mount a tmpfs there with `options`; False where mounting is not allowed
    (it needs root and CAP_SYS_ADMIN). The caller unmounts it."""
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def run_folders(save_dir: Path) -> list[Path]:
    return sorted(p for p in save_dir.glob("*/*") if p.is_dir()) if save_dir.exists() else []


# ------------------------------------------------------------------ start-up
def test_a_config_that_is_not_text_is_a_one_line_error(tmp_path, capsys):
    for name in ("random.yaml", "random.json"):
        path = tmp_path / name
        path.write_bytes(bytes(range(256)) * 4)
        assert train.main(["-c", str(path)]) == 2
        assert f"config file {path} is not UTF-8 text" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("make_save_dir, problem", [
    (lambda tmp: tmp / "a_file" / "saved", "a_file is a file, not a folder"),
    (lambda tmp: tmp / "a_file", "a_file is a file, not a folder"),
])
def test_a_save_dir_that_cannot_be_created_fails_before_training(regression_config, tmp_path, capsys,
                                                                   make_save_dir, problem):
    (tmp_path / "a_file").write_text("not a folder")
    regression_config["trainer"]["save_dir"] = str(make_save_dir(tmp_path))
    assert train.main(["-c", write_config(tmp_path, regression_config)]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"config key 'trainer.save_dir' ({make_save_dir(tmp_path)})" in err and problem in err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_a_read_only_save_dir_fails_before_training(regression_config, tmp_path, capsys):
    """A read-only file system stops root too; without permission to mount one, a chmod-ed folder
    (which root may write anyway)."""
    read_only = tmp_path / "ro"
    mounted = mount_tmpfs(read_only, "ro,size=64k")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only file system here, and root can write a chmod 555 folder")
        read_only.chmod(0o555)
    try:
        regression_config["trainer"]["save_dir"] = str(read_only / "saved")
        assert train.main(["-c", write_config(tmp_path, regression_config)]) == 2
        assert f"{read_only} is not writable" in one_line_error(capsys.readouterr().err)
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=True)
        read_only.chmod(0o755)


def test_a_failed_start_leaves_no_run_folder(mnist_config, tmp_path, capsys):
    save_dir = Path(mnist_config["trainer"]["save_dir"])
    mnist_config["data_loader"]["args"]["root"] = str(tmp_path / "no_mnist_here")
    assert train.main(["-c", write_config(tmp_path, mnist_config)]) == 2
    assert "MNIST train split not found" in one_line_error(capsys.readouterr().err)
    assert run_folders(save_dir) == []
    # an unreadable data file, and a failure after the data and model are built (optimizer groups)
    raw = Path(mnist_config["data_loader"]["args"]["root"]) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    assert train.main(["-c", write_config(tmp_path, mnist_config)]) == 2
    assert "is truncated or corrupt" in one_line_error(capsys.readouterr().err)
    assert run_folders(save_dir) == []


def test_a_start_that_fails_after_the_run_folder_exists_removes_it(regression_config, capsys):
    regression_config["optimizer"] = {"nope": {"type": "SGD", "args": {"lr": 0.1}}}
    save_dir = Path(regression_config["trainer"]["save_dir"])
    with pytest.raises(ConfigError, match="names parameter groups \\['nope'\\]"):
        jobs.train(load_and_check(base=regression_config))
    assert run_folders(save_dir) == []


@pytest.mark.parametrize("spec", ["x,y", "1,,2", "-1", "0,0", "gpu0", "1.5", ""])
def test_device_flag_takes_cpu_or_gpu_indices_only(spec, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["-d", spec, "-c", "configs/vae_pinwheel.yaml"])
    assert info.value.code == 2
    assert "-d takes cpu or distinct comma-separated GPU indices" in one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------- a full disk
def fail_after(monkeypatch, target, attribute: str, calls_ok: int, error: BaseException) -> None:
    """Make `target.attribute` raise `error` from its (calls_ok + 1)-th call on."""
    original = getattr(target, attribute)
    count = [0]

    def flaky(*args, **kwargs):
        count[0] += 1
        if count[0] > calls_ok:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, flaky)


@pytest.mark.parametrize("writer, error", [
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 11904 vs 11808")),
    ("copyfile", OSError(28, "No space left on device")),
])
def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(regression_config, monkeypatch, capsys,
                                                                         writer, error):
    """Epoch 1 and 2 save (last.pt, then a copy per epoch); the write in epoch 3 fails."""
    regression_config["trainer"].update(epochs=5, save_period=1, monitor="off")
    if writer == "torch.save":
        fail_after(monkeypatch, checkpoint_module.torch, "save", 2, error)
    else:
        fail_after(monkeypatch, checkpoint_module.shutil, "copyfile", 2, error)
    with pytest.raises(OutputWriteError) as info:
        jobs.train(load_and_check(base=regression_config))
    run_dir = run_folders(Path(regression_config["trainer"]["save_dir"]))[0]
    last = run_dir / "checkpoints" / "last.pt"
    saved_epoch = 2 if writer == "torch.save" else 3  # the copy fails after last.pt of epoch 3 is written
    message = str(info.value)
    assert "\n" not in message and "training stopped in epoch 3" in message
    assert f"the last good checkpoint is {last} (epoch {saved_epoch}): resume with python train.py -r {last}" \
        in message
    assert load_checkpoint(last)["epoch"] == saved_epoch
    assert not list(run_dir.rglob("*.tmp-*")), "a temporary file was left behind"
    if writer == "torch.save":
        assert "MiB free there" in message


class _FillingStream:
    """A file stream whose writes fail with ENOSPC after `calls_ok` of them."""

    def __init__(self, stream, calls_ok: int):
        self.stream, self.calls_left = stream, calls_ok

    def write(self, text: str) -> int:
        self.calls_left -= 1
        if self.calls_left < 0:
            raise OSError(28, "No space left on device")
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def test_a_full_disk_while_logging_stops_with_one_line(regression_config, monkeypatch, capsys):
    regression_config["trainer"].update(epochs=3, verbosity=1)
    original = jobs.setup_logging

    def full_after_two_lines(*args, **kwargs):
        logger = original(*args, **kwargs)
        log_file = next(h for h in logger.handlers if hasattr(h, "baseFilename"))
        log_file.stream = _FillingStream(log_file.stream, 2)
        return logger

    monkeypatch.setattr(jobs, "setup_logging", full_after_two_lines)
    assert train.main(["-c", write_config(Path(regression_config["trainer"]["save_dir"]).parent,
                                          regression_config)]) == 2
    err = one_line_error(capsys.readouterr().err)
    run_dir = run_folders(Path(regression_config["trainer"]["save_dir"]))[0]
    assert f"cannot write {run_dir / 'train.log'}: No space left on device; training stopped in epoch" in err
    assert "Logging error" not in err and "last good checkpoint is" in err


@pytest.mark.integration
def test_a_full_disk_while_writing_events_stops_with_one_line(pinwheel_config, tmp_path):
    """In a subprocess, as a user sees it: TensorBoard writes on a thread, whose traceback must not be printed."""
    pinwheel_config["trainer"].update(tensorboard=True, epochs=3)
    config = write_config(tmp_path, pinwheel_config)
    fill_disk_after_20_event_writes = (
        "import runpy, sys; from tensorboard.summary.writer import record_writer; "
        "write, calls = record_writer.RecordWriter.write, [0]\n"
        "def failing(self, data):\n"
        "    calls[0] += 1\n"
        "    if calls[0] > 20: raise OSError(28, 'No space left on device')\n"
        "    return write(self, data)\n"
        f"record_writer.RecordWriter.write = failing; sys.argv = ['train.py', '-c', '{config}']; "
        "runpy.run_path('train.py', run_name='__main__')")
    proc = run_cli("-c", fill_disk_after_20_event_writes)
    assert proc.returncode == 2, proc.stderr
    err = one_line_error(proc.stderr)
    assert "/vae_pinwheel/" in err and "No space left on device; training stopped in epoch" in err


@pytest.fixture
def small_filesystem(tmp_path):
    """A 600 KiB tmpfs: room for a few pinwheel-VAE checkpoints (290 KB each), not for all."""
    mount = tmp_path / "small"
    if not mount_tmpfs(mount, "size=600k"):
        pytest.skip("cannot mount a small file system here (needs root and CAP_SYS_ADMIN); the simulated "
                    "full-disk tests cover the same paths")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.integration
def test_a_real_full_disk_keeps_the_last_good_checkpoint(small_filesystem, tmp_path):
    proc = run_cli("train.py", "-c", "configs/vae_pinwheel.yaml", "--epochs", "30", "--set",
                   f"trainer.save_dir={small_filesystem}", "--set", "trainer.verbosity=0", "--set",
                   "trainer.log_every=1")
    assert proc.returncode == 2, proc.stderr
    err = one_line_error(proc.stderr)
    assert "cannot write" in err
    (run_dir,) = run_folders(small_filesystem)
    last = run_dir / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is {last} (epoch" in err
    epoch = int(err.split(f"{last} (epoch ")[1].split(")")[0])
    assert load_checkpoint(last)["epoch"] == epoch >= 1
    assert not list(run_dir.rglob("*.tmp-*"))


def test_resume_after_a_full_disk_continues_exactly(regression_config, monkeypatch):
    """The run stopped by a failed write resumes from its last good checkpoint to the same end state."""
    regression_config["trainer"]["epochs"] = 4
    reference = jobs.train(load_and_check(base=regression_config))
    fail_after(monkeypatch, checkpoint_module.torch, "save", 2, RuntimeError("write failed"))
    with pytest.raises(OutputWriteError):
        jobs.train(load_and_check(base=regression_config))
    monkeypatch.undo()
    stopped = [p for p in run_folders(Path(regression_config["trainer"]["save_dir"])) if p != reference.run_dir][0]
    path = stopped / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    jobs.train(load_and_check(base=checkpoint["config"]), checkpoint, path)
    a, b = final_state(reference.run_dir), final_state(stopped)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_last_good_checkpoint_before_any_was_written(regression_config):
    context = TrainerContext(torch.device("cpu"), logging.getLogger("t"), None, DistInfo())
    trainer = BaseTrainer(torch.nn.Linear(1, 1), {}, {}, load_and_check(base=regression_config), context)
    assert trainer.last_good_checkpoint() == "no checkpoint had been written yet"
