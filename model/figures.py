"""The drawing helpers every family of figures shares, for TensorBoard cards and for paper.

Every figure is drawn for the TensorBoard card it lands in: `new_figure` makes it FIGURE_WIDTH x FIGURE_HEIGHT
inches, the card's proportions, so that the card shows it CARD_HEIGHT_PX tall, and one point of font is the same
height on the card in every figure (`card_pt`: TICK_PT and LEGEND_PT are 9.5 px there). DPI keeps the PNG files
full size. A figure is written with `log_figure`, which adds it with `writer.add_figure` and
closes it. The `*_figure` functions only draw (tensors in, Figure out); the `log_*` functions write a small set
of them under one tag. Here: image grids (VAE, GraphVAE), scatter plots, and sequence plots (SVAE-LDS/SLDS,
RecurrentGraphVAE); each family's own figures live beside its models (model/svae/figures.py,
model/graph/figures.py).

Shapes: B examples or sequences, C channels, H x W pixels, T time steps, D observed dims, M points.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

#: The image area of a TensorBoard card, measured in Chromium at 1600 x 1200 px (issue 28): the Time Series page
#: shows an image at most 215 px tall, and the IMAGES tab draws every image 350 px wide (the Time Series card is
#: at least that wide at that window size). A figure of these proportions is shown whole at 215 x 350 px.
CARD_HEIGHT_PX, CARD_WIDTH_PX = 215, 350
#: every figure's size (inches): the card's proportions, so that the card shows it CARD_HEIGHT_PX tall
FIGURE_HEIGHT = 3.0
FIGURE_WIDTH = FIGURE_HEIGHT * CARD_WIDTH_PX / CARD_HEIGHT_PX  # 4.88
DPI = 170  # PNG files of 830 x 510 px


def card_pt(px: float) -> float:
    """The font size (pt) whose text is `px` pixels tall on the card: FIGURE_HEIGHT * 72 pt there fill
    CARD_HEIGHT_PX."""
    return px * FIGURE_HEIGHT * 72 / CARD_HEIGHT_PX


TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT = card_pt(11), card_pt(10), card_pt(9.5), card_pt(9.5)
#: at most this many figures of one kind (sequences, predictions) per call
MAX_FIGURES = 3

INTENSITY_CMAP = "viridis"
PREFIX_COLOR = "red"
PEN_UP_COLOR = "#a0a0a0"


def new_figure(nrows: int = 1, ncols: int = 1, **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A Figure FIGURE_WIDTH x FIGURE_HEIGHT inches at DPI, with constrained layout and a (nrows, ncols) array of
    axes whose tick labels are TICK_PT."""
    fig = Figure(figsize=(FIGURE_WIDTH, FIGURE_HEIGHT), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    for ax in axes.flat:
        ax.tick_params(labelsize=TICK_PT)
    return fig, axes


def legend_columns(handles: list[Any], handle_length: float = 1.2) -> int:
    """The most columns of these legend entries (each a handle `handle_length` em long, a pad, and its label at
    LEGEND_PT; split into columns as matplotlib does, 0.8 em apart: `columnspacing=0.8`) that fit across a
    figure."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font, measure = FontProperties(size=LEGEND_PT), TextToPath()
    widths = [measure.get_text_width_height_descent(h.get_label(), font, ismath=False)[0]
              + (handle_length + 0.8) * LEGEND_PT for h in handles]  # pt
    for ncols in range(len(handles), 1, -1):
        columns = [max(column) for column in np.array_split(widths, ncols)]
        if sum(columns) + 0.8 * LEGEND_PT * (ncols + 1) <= FIGURE_WIDTH * 72:  # with the spaces between columns
            return ncols
    return 1


def log_figure(writer: Any, tag: str, fig: Figure, step: int) -> None:
    """writer.add_figure(tag, fig, step), then close the figure."""
    import matplotlib.pyplot as plt

    writer.add_figure(tag, fig, step)
    plt.close(fig)  # a no-op for a Figure pyplot does not track; frees it if it does


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def figure_title(fig: Figure, text: str) -> None:
    """The figure's title, as its suptitle (the run's split and epoch are appended to it when it is written)."""
    fig.suptitle(text, fontsize=TITLE_PT)


def _draw_tiles(ax: Axes, rows: list[np.ndarray], gaps_after: set[int] = frozenset()) -> list[float]:
    """Draw rows of images (each (n, H, W) or (n, H, W, 3), values in [0, 1]) as tiles on one axes, a small gap
    between tiles and a wider one after the rows in `gaps_after`. Returns the y centre of each row."""
    height, width = rows[0].shape[1:3]
    gap = 0.08 * max(height, width)
    centres, y = [], 0.0
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            x = c * (width + gap)
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                      extent=(x, x + width, y + height, y))
        centres.append(y + height / 2)
        y += height + gap + (3 * gap if r in gaps_after else 0)
    ncols = max(len(row) for row in rows)
    ax.set_xlim(-gap, ncols * (width + gap))
    ax.set_ylim(y, -gap)
    ax.set_xticks([c * (width + gap) + width / 2 for c in range(ncols)], [str(c + 1) for c in range(ncols)])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return centres


def _as_tiles(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) with C = 1 or 3 -> (B, H, W) or (B, H, W, 3), clipped to [0, 1]."""
    images = to_numpy(images.float().clamp(0, 1))
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def reconstructions_figure(data: torch.Tensor, recon: torch.Tensor, per_row: int = 6, groups: int = 2) -> Figure:
    """Data (B, C, H, W) in [0, 1] and their reconstructions (same shape): up to `groups` blocks of `per_row`
    examples, each a "data" row above its "reconstruction" row."""
    per_row = min(per_row, len(data))
    groups = min(groups, math.ceil(len(data) / per_row))
    data, recon = _as_tiles(data), _as_tiles(recon)
    rows = []
    for g in range(groups):
        rows += [data[g * per_row:(g + 1) * per_row], recon[g * per_row:(g + 1) * per_row]]
    fig, axes = new_figure()
    ax = axes[0, 0]
    centres = _draw_tiles(ax, rows, gaps_after={2 * g + 1 for g in range(groups - 1)})
    ax.set_yticks(centres, ["data", "reconstruction"] * groups, fontsize=LABEL_PT)
    ax.set_xlabel("example (column)", fontsize=LABEL_PT)
    figure_title(fig, "Data and their reconstructions")
    return fig


def samples_figure(samples: torch.Tensor, per_row: int = 6, title: str = "Samples from the model") -> Figure:
    """Samples (S, C, H, W) in [0, 1] in rows of `per_row`, rows and columns numbered."""
    per_row = min(per_row, len(samples))
    tiles = _as_tiles(samples)
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    fig, axes = new_figure()
    ax = axes[0, 0]
    centres = _draw_tiles(ax, rows)
    ax.set_yticks(centres, [str(r + 1) for r in range(len(rows))])
    ax.set_xlabel("column", fontsize=LABEL_PT)
    ax.set_ylabel("row", fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig


def log_image_grids(writer: Any, tag: str, step: int, reconstructions: tuple[torch.Tensor, torch.Tensor],
                    samples: torch.Tensor) -> None:
    """`{tag}/reconstructions` (data (B, C, H, W) and reconstructions, the first 12) and `{tag}/samples`
    ((S, C, H, W), the first 24), all in [0, 1]: rows of 6, large enough to read in a card."""
    data, recon = reconstructions
    log_figure(writer, f"{tag}/reconstructions", reconstructions_figure(data[:12], recon[:12]), step)
    log_figure(writer, f"{tag}/samples", samples_figure(samples[:24], title="Samples (decoder means)"), step)


def scatter_figure(title: str, xlabel: str = "dimension 1", ylabel: str = "dimension 2",
                   **point_sets: torch.Tensor) -> Figure:
    """2-D point sets, name -> (M, 2), in one scatter plot with a legend beside it."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    for name, points in point_sets.items():
        points = to_numpy(points)
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.6, label=f"{name}\n(n = {len(points)})")
    fig.legend(fontsize=LEGEND_PT, markerscale=2.0, loc="outside right center", frameon=False)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel, fontsize=LABEL_PT)
    ax.set_ylabel(ylabel, fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig


def sequence_figure(rows: dict[str, torch.Tensor], prefix_len: int | None = None, title: str = "",
                    value_range: tuple[float, float] | None = None) -> Figure:
    """One sequence as stacked panels, one per named row (T, D) (e.g. data, mean, samples), named on their left:
    time on the x axis, observed dim on the y axis (pixel for [0, 1] data, channel otherwise), the value as colour
    with a shared colour bar over `value_range` (default: [0, 1] if the first row lies in it, else its range).
    NaN entries (steps past the sequence's end) are grey. With `prefix_len`, a red line at the end of the
    observed prefix, explained in a legend."""
    from matplotlib import colormaps

    names = list(rows)
    values = {name: to_numpy(rows[name]) for name in names}
    if value_range is None:
        first = values[names[0]]
        low, high = float(np.nanmin(first)), float(np.nanmax(first))
        value_range = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
    unit_range = tuple(value_range) == (0.0, 1.0)
    dims = values[names[0]].shape[1]
    fig, axes = new_figure(nrows=len(names), sharex=True)
    cmap = colormaps[INTENSITY_CMAP].with_extremes(bad="#c8c8c8")
    image = None
    for ax, name in zip(axes[:, 0], names):
        image = ax.imshow(values[name].T, cmap=cmap, vmin=value_range[0], vmax=value_range[1], aspect="auto",
                          interpolation="nearest", origin="upper")
        if prefix_len is not None:
            ax.axvline(prefix_len - 0.5, color=PREFIX_COLOR, lw=2.0)
        ax.set_ylabel(name, fontsize=LABEL_PT, rotation=0, ha="right", va="center")
        ax.set_yticks([0, dims - 1])
    axes[-1, 0].set_xlabel("time step", fontsize=LABEL_PT)
    colorbar = fig.colorbar(image, ax=list(axes[:, 0]), fraction=0.05, pad=0.02)
    colorbar.set_label("intensity" if unit_range else "value", fontsize=LABEL_PT)
    colorbar.ax.tick_params(labelsize=TICK_PT)
    handles = [prefix_handle(prefix_len)] if prefix_len is not None else []
    if any(np.isnan(v).any() for v in values.values()):
        handles.append(Patch(facecolor="#c8c8c8", label="past the end of the sequence"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=legend_columns(handles, 2.0), fontsize=LEGEND_PT,
                   columnspacing=0.8, frameon=False)
    fig.supylabel("pixel" if unit_range else "channel", fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig


def prefix_handle(prefix_len: int) -> Line2D:
    return Line2D([], [], color=PREFIX_COLOR, lw=2.0, label=f"end of the observed prefix (steps 0-{prefix_len - 1})")


def _pen_path(ax: Axes, seq: np.ndarray, prefix_len: int | None) -> None:
    """Draw pen strokes (T, 3) of (pen_lift, dx, dy) as a path from a start dot at (0, 0): the moves after a lift
    (pen_lift > 1/2) dotted grey, with `prefix_len` the steps from the prefix's end on in red; rows with NaN
    skipped."""
    seq = seq[~np.isnan(seq).any(1)]
    points = np.concatenate([np.zeros((1, 2)), seq[:, 1:3].cumsum(0)])  # (T + 1, 2)
    for t in range(len(seq)):  # one segment per step: from point t to t + 1, dotted if the pen was up
        late = prefix_len is not None and t >= prefix_len
        if t > 0 and seq[t - 1, 0] > 0.5:
            ax.plot(points[t:t + 2, 0], points[t:t + 2, 1], color=PEN_UP_COLOR, lw=1.0, ls=":")
        else:
            ax.plot(points[t:t + 2, 0], points[t:t + 2, 1], color=PREFIX_COLOR if late else "black", lw=1.4)
    ax.plot(0, 0, "o", color="black", ms=4)


def strokes_figure(rows: dict[str, torch.Tensor], prefix_len: int | None = None, title: str = "") -> Figure:
    """One pen-stroke sequence per named row (T, 3) of (pen_lift, dx, dy), e.g. data, reconstruction,
    continuations, each drawn by `_pen_path` in its own panel, at most three in a row, y downwards, as on a page.
    A legend explains the lines."""
    from matplotlib.ticker import MaxNLocator

    names = list(rows)
    nrows = math.ceil(len(names) / 3)
    fig, axes = new_figure(nrows=nrows, ncols=math.ceil(len(names) / nrows))
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        _pen_path(ax, to_numpy(rows[name]), prefix_len)
        ax.set_aspect("equal", adjustable="datalim")
        ax.yaxis.set_inverted(True)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(3))
        ax.set_title(name, fontsize=LABEL_PT)
        ax.set_xlabel("pen x", fontsize=LABEL_PT)
    for ax in axes[:, 0]:
        ax.set_ylabel("pen y", fontsize=LABEL_PT)
    handles = [Line2D([], [], color="black", marker="o", lw=2,
                      label="pen down" if prefix_len is None else f"steps 0-{prefix_len - 1} (prefix)")]
    if prefix_len is not None:
        handles.append(Line2D([], [], color=PREFIX_COLOR, lw=2, label="later steps"))
    handles.append(Line2D([], [], color=PEN_UP_COLOR, lw=1.5, ls=":", label="pen up"))
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_columns(handles, 2.0), fontsize=LEGEND_PT,
               columnspacing=0.8, frameon=False)
    figure_title(fig, title)
    return fig


def log_sequences(writer: Any, tag: str, step: int, rows: dict[str, torch.Tensor], prefix_len: int | None = None,
                  title: str = "Sequence", strokes: bool = False) -> None:
    """One figure per sequence, `{tag}_0`, `{tag}_1`, ... (at most MAX_FIGURES): rows name -> (B, T, D) (with
    `strokes`, (B, T, 3) pen strokes, drawn by `strokes_figure`; else `sequence_figure`, on the colour range of
    the first row over all B sequences)."""
    names = list(rows)
    first = to_numpy(rows[names[0]])
    low, high = float(np.nanmin(first)), float(np.nanmax(first))
    value_range = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
    for b in range(min(MAX_FIGURES, len(first))):
        one = {name: rows[name][b] for name in names}
        heading = f"{title} {b + 1}"
        fig = strokes_figure(one, prefix_len, heading) if strokes else sequence_figure(one, prefix_len, heading,
                                                                                        value_range)
        log_figure(writer, f"{tag}_{b}", fig, step)
