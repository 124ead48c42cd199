"""TensorBoard writers of a run: tensorboard/train and tensorboard/val.

Epoch means go to both under the same tag ("epoch/<metric>"), so TensorBoard
draws train and validation in one chart, on the global-step axis shared with the
per-step scalars ("step/<metric>"). Disabled writers (tensorboard off, or not
rank 0) accept every call and do nothing.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from utils.errors import OutputWriteError


class _NullWriter:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _quiet_event_writer_errors(args: threading.ExceptHookArgs, previous=threading.excepthook) -> None:
    """TensorBoard's writer thread re-raises its OSError on the main thread at the next call (there
    it becomes one OutputWriteError line); do not also print it as a thread traceback."""
    if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        previous(args)


threading.excepthook = _quiet_event_writer_errors


class _GuardedWriter:
    """A SummaryWriter of `log_dir` whose failed writes (a full disk, a vanished folder) raise
    OutputWriteError naming the folder. TensorBoard writes on a background thread and re-raises
    its error at the next call, so the error may surface one call late."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        try:
            self._writer = SummaryWriter(str(log_dir))
        except OSError as err:
            raise OutputWriteError(log_dir, err) from None

    def __getattr__(self, name: str):
        method = getattr(self._writer, name)

        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except OSError as err:
                raise OutputWriteError(self.log_dir, err) from None

        return guarded


class TensorboardWriter:
    """`train` and `val` SummaryWriters under <run_dir>/tensorboard/."""

    def __init__(self, run_dir: Path | None, enabled: bool):
        if enabled and run_dir is not None:
            self.train: Any = _GuardedWriter(Path(run_dir) / "tensorboard" / "train")
            self.val: Any = _GuardedWriter(Path(run_dir) / "tensorboard" / "val")
        else:
            self.train = self.val = _NullWriter()

    def close(self) -> None:
        for writer in (self.train, self.val):
            writer.close()
