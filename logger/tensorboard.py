"""TensorBoard writers of a run: tensorboard/train and tensorboard/val.

Epoch means go to both under the same tag ("epoch/<metric>"), so TensorBoard
draws train and validation in one chart, on the global-step axis shared with the
per-step scalars ("step/<metric>"). Disabled writers (tensorboard off, or not
rank 0) accept every call and do nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class _NullWriter:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class TensorboardWriter:
    """`train` and `val` SummaryWriters under <run_dir>/tensorboard/."""

    def __init__(self, run_dir: Path | None, enabled: bool):
        if enabled and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.train: Any = SummaryWriter(str(Path(run_dir) / "tensorboard" / "train"))
            self.val: Any = SummaryWriter(str(Path(run_dir) / "tensorboard" / "val"))
        else:
            self.train = self.val = _NullWriter()

    def close(self) -> None:
        for writer in (self.train, self.val):
            writer.close()
