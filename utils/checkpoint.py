"""Checkpoint files: atomic writes and weights-only loads with clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (the
config included), so `torch.load(path, weights_only=True)` reads it. Writes go
to a temporary file in the same folder and are moved into place with
`os.replace`, so a reader never sees a half-written file, even after SIGKILL.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from utils.errors import CheckpointError, OutputWriteError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "arch", "epoch", "global_step", "model")


def _replace_atomically(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place. A failed write
    (a full disk: OSError, or RuntimeError from torch.save's zip writer) leaves `path` as it was and
    no temporary file, and raises OutputWriteError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        _replace_atomically(tmp, path)
    except (OSError, RuntimeError) as err:
        raise OutputWriteError(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(state: dict, path: str | Path) -> None:
    """torch.save `state` to `path` atomically."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a finished checkpoint file to `dst` atomically."""
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by this framework, or raise CheckpointError saying why not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, wrong format, pickled objects: all mean 'unusable'
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt or not written by this framework): {detail}"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this framework (missing {missing})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, this code reads {FORMAT_VERSION}"
        )
    return state


def load_model_weights(model: torch.nn.Module, state: dict) -> None:
    """Load a checkpoint's weights and schedule state into `model` (a BaseModel), or say why they do not fit."""
    arch = model.__class__.__name__
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"checkpoint (architecture {state['arch']!r}) does not fit the model {arch}: {detail}"
        ) from None
    model.load_schedule_state(state.get("schedule", {}))


def run_dir_of(checkpoint_path: str | Path) -> Path | None:
    """saved/<name>/<run>/checkpoints/last.pt -> saved/<name>/<run>; None outside a run folder."""
    parent = Path(checkpoint_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else None
