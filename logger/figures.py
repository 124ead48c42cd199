"""What a model's `visualize` writes to: every figure goes to TensorBoard and to a PNG file in the run
folder's figures/, so that results can be looked at (and put in a paper) without TensorBoard."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from utils.checkpoint import write_atomic


def file_stem(tag: str) -> str:
    """A figure tag as part of a file name: 'val/predictions_0' -> 'val_predictions_0'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tag.replace("/", "_"))


class FigureWriter:
    """`add_figure(tag, figure, step)` to a TensorBoard SummaryWriter (or a disabled one) and to
    `folder / name(tag)` as a PNG at the figure's own size and dpi.

    Args:
        tensorboard: the SummaryWriter of the run the figures belong to.
        folder: where the PNG files go (created on first use); None: TensorBoard only.
        name: tag -> file name, e.g. 'val/clusters' -> 'val_clusters_epoch3.png'.
        caption: appended to every figure's title in brackets (the split and epoch: "val, epoch 3"), so that
            a figure says what it shows wherever it is seen.
    """

    def __init__(self, tensorboard: Any, folder: Path | None, name: Callable[[str], str], caption: str = ""):
        self.tensorboard, self.folder, self.name, self.caption = tensorboard, folder, name, caption

    def add_figure(self, tag: str, figure: Any, global_step: int | None = None) -> None:
        """Caption the figure, render it once and hand the pixels to both (TensorBoard would render it again)."""
        import matplotlib.image
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if self.caption:
            _caption(figure, self.caption)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
        plt.close(figure)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / self.name(tag), lambda tmp: matplotlib.image.imsave(tmp, pixels, format="png"))
        self.tensorboard.add_image(tag, pixels, global_step, dataformats="HWC")


def _caption(figure: Any, caption: str) -> None:
    """"Title (caption)", in the title's own font; the caption alone as the title of an untitled figure."""
    title = figure._suptitle  # the suptitle's Text (matplotlib has a getter for its string only)
    if title is None:
        figure.suptitle(caption)
    else:
        title.set_text(f"{title.get_text()} ({caption})")
