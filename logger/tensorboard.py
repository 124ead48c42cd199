"""TensorBoard writers of a run: tensorboard/train, tensorboard/val and tensorboard/test.

Epoch means go to train and val under the same tag ("epoch/<metric>"), so TensorBoard
draws train and validation in one chart, on the global-step axis shared with the
per-step scalars ("step/<metric>"); test.py writes its metrics and figures to test.
The tensorboard/ folder itself is the run's HPARAMS session (`write_hparams`): its
hyperparameters, and as metrics the last value of every scalar of its train, val and
test runs. Disabled writers (tensorboard off, or not rank 0) accept the calls the framework
makes and do nothing.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from utils.errors import OutputWriteError


class _NullWriter:
    """A disabled split: the SummaryWriter methods the framework calls, doing nothing."""

    def add_scalar(self, tag: str, value: Any, global_step: int | None = None) -> None:
        pass

    def add_text(self, tag: str, text: str, global_step: int | None = None) -> None:
        pass

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None) -> None:
        pass

    def add_image(self, tag: str, image: Any, global_step: int | None = None, dataformats: str = "CHW") -> None:
        pass

    def close(self) -> None:
        pass


_previous_excepthook = threading.excepthook


def _quiet_event_writer_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread re-raises its OSError on the main thread at the next call (there
    it becomes one OutputWriteError line); do not also print it as a thread traceback."""
    if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _previous_excepthook(args)


def _install_quiet_excepthook() -> None:
    """Put `_quiet_event_writer_errors` in front of `threading.excepthook` (once: a no-op while it is there)."""
    global _previous_excepthook
    if threading.excepthook is not _quiet_event_writer_errors:
        _previous_excepthook = threading.excepthook
        threading.excepthook = _quiet_event_writer_errors


class _GuardedWriter:
    """A SummaryWriter of `log_dir` whose failed writes (a full disk, a vanished folder) raise
    OutputWriteError naming the folder. TensorBoard writes on a background thread and re-raises
    its error at the next call, so the error may surface one call late."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        _install_quiet_excepthook()
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
    """SummaryWriters under <run_dir>/tensorboard/ for the `splits` asked for (attributes `train`,
    `val`, `test`; the others are disabled)."""

    SPLITS = ("train", "val", "test")

    def __init__(self, run_dir: Path | None, enabled: bool, splits: tuple[str, ...] = ("train", "val")):
        self.folder = Path(run_dir) / "tensorboard" if enabled and run_dir is not None else None
        for split in self.SPLITS:
            on = self.folder is not None and split in splits
            setattr(self, split, _GuardedWriter(self.folder / split) if on else _NullWriter())

    def write_hparams(self, hparams: dict[str, Any]) -> None:
        """Record this run as one session of TensorBoard's HPARAMS table. Only the session is written,
        never an experiment definition: TensorBoard then builds the table from every session under the
        logdir (the union of their hyperparameters, those that differ first), whatever the architecture."""
        if self.folder is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        _, session_start, session_end = hparams_summaries(hparams, {})
        session = _GuardedWriter(self.folder)
        for summary in (session_start, session_end):
            session._get_file_writer().add_summary(summary)
        session.close()

    def close(self) -> None:
        for split in self.SPLITS:
            getattr(self, split).close()
