"""Run folders saved/<name>/<MMDD-HHMMSS>/ and the environment record."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml

from utils.checkpoint import write_atomic
from utils.errors import ConfigError, OutputWriteError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def check_save_dir(save_dir: str | Path) -> None:
    """Raise ConfigError unless run folders can be created under `save_dir`: its nearest existing
    ancestor must be a folder this process may write into. Creates nothing."""
    path = Path(save_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable (read-only file system or no permission)"
    if problem:
        raise ConfigError(f"config key 'trainer.save_dir' ({save_dir}): cannot create run folders there: {problem}; "
                          f"set trainer.save_dir to a writable folder")


def new_run_dir(save_dir: str | Path, name: str, path: Path | None = None) -> Path:
    """Create a fresh run folder: `path` when given (it must not exist yet), else save_dir/<name>/<run_id>."""
    if path is not None:
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=False)
            return path
        except OSError as err:
            raise OutputWriteError(path, err) from None
    run_dir = new_folder(Path(save_dir) / name)
    (run_dir / "checkpoints").mkdir()
    return run_dir


def new_folder(parent: Path) -> Path:
    """Create parent/<MMDD-HHMMSS> (the local start time), with -2, -3, ... appended when another run or sweep
    took that second: short ids, so that TensorBoard's run names fit its legend."""
    stem = time.strftime("%m%d-%H%M%S")
    for attempt in range(1, 1000):
        path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputWriteError(path, err) from None
    raise OutputWriteError(parent, FileExistsError(f"999 folders named {stem}-N already exist"))


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, enabled: bool) -> Iterator[None]:
    """Delete `run_dir` (made moments ago, holding only start-up files) if the block raises, so
    that a failed start leaves no half-made run folder behind."""
    try:
        yield
    except BaseException:
        if enabled:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record() -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_run_files(run_dir: Path, config: dict, keep_environment: bool = False) -> None:
    """The resolved config and the environment record (a resumed run keeps the first record)."""
    text = yaml.safe_dump(config, sort_keys=False)
    write_atomic(run_dir / "config.yaml", lambda tmp: tmp.write_text(text))
    env = run_dir / "environment.json"
    if not (keep_environment and env.exists()):
        record = json.dumps(environment_record(), indent=2)
        write_atomic(env, lambda tmp: tmp.write_text(record))
