"""The drawing helpers every family of figures shares, for TensorBoard cards and for paper.

Every figure is a matplotlib Figure made by `new_figure` (fixed dpi, at least MIN_SIDE_PX on its shorter side,
constrained layout, fonts that stay legible when a TensorBoard card shows it about 400 px wide) and is written
with `log_figure`, which adds it with `writer.add_figure` and closes it. The `*_figure` functions only draw
(tensors in, Figure out); the `log_*` functions write a small set of them under one tag. Here: image grids
(VAE, GraphVAE), scatter plots, and sequence plots (SVAE-LDS/SLDS, RecurrentGraphVAE); each family's own
figures live beside its models (model/svae/figures.py, model/graph/figures.py).

Shapes: B examples or sequences, C channels, H x W pixels, T time steps, D observed dims, M points.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

DPI = 100
MIN_SIDE_PX = 480
TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT = 15, 14, 12, 12
#: at most this many figures of one kind (sequences, predictions) per call
MAX_FIGURES = 3

INTENSITY_CMAP = "viridis"
PREFIX_COLOR = "red"
PEN_UP_COLOR = "#a0a0a0"
STATE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                "#1f78b4", "#e31a1c", "#a6cee3", "#000000")


def new_figure(width: float = 6.4, height: float = 5.0, nrows: int = 1, ncols: int = 1,
               **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A Figure of `width` x `height` inches at DPI (the shorter side raised to MIN_SIDE_PX if needed), with
    constrained layout and a (nrows, ncols) array of axes whose tick labels are TICK_PT."""
    min_inches = MIN_SIDE_PX / DPI
    if width < height:
        width = max(width, min_inches)
    else:
        height = max(height, min_inches)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    for ax in axes.flat:
        ax.tick_params(labelsize=TICK_PT)
    return fig, axes


def log_figure(writer: Any, tag: str, fig: Figure, step: int) -> None:
    """writer.add_figure(tag, fig, step), then close the figure."""
    import matplotlib.pyplot as plt

    writer.add_figure(tag, fig, step)
    plt.close(fig)  # a no-op for a Figure pyplot does not track; frees it if it does


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def figure_title(fig: Figure, text: str) -> None:
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


def _grid_height(rows: list[np.ndarray], width: float, label_width: float, group_gaps: int = 0) -> float:
    """Figure height (inches) that fits rows of tiles as `_draw_tiles` draws them (with `group_gaps` wide gaps)
    in a figure `width` inches wide, `label_width` of it taken by the row labels, with room for a one-line
    title and the x axis."""
    tile_h, tile_w = rows[0].shape[1:3]
    gap = 0.08 * max(tile_h, tile_w)
    ncols = max(len(row) for row in rows)
    grid_h = len(rows) * (tile_h + gap) + 3 * gap * group_gaps
    grid_w = ncols * (tile_w + gap)
    return 1.2 + (width - label_width) * grid_h / grid_w


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
    fig, axes = new_figure(7.0, _grid_height(rows, 7.0, 1.8, groups - 1))
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
    fig, axes = new_figure(6.4, _grid_height(rows, 6.4, 0.8))
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
    log_figure(writer, f"{tag}/samples", samples_figure(samples[:24], title="Samples from the model (decoder means)"),
               step)


def scatter_figure(title: str, xlabel: str = "dimension 1", ylabel: str = "dimension 2",
                   **point_sets: torch.Tensor) -> Figure:
    """2-D point sets, name -> (M, 2), in one scatter plot with a legend."""
    fig, axes = new_figure(6.4, 5.6)
    ax = axes[0, 0]
    for name, points in point_sets.items():
        points = to_numpy(points)
        ax.scatter(points[:, 0], points[:, 1], s=10, alpha=0.6, label=f"{name} (n = {len(points)})")
    ax.legend(fontsize=LEGEND_PT, markerscale=2.0, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel, fontsize=LABEL_PT)
    ax.set_ylabel(ylabel, fontsize=LABEL_PT)
    ax.set_title(title, fontsize=TITLE_PT)
    return fig


def prefix_handle(prefix_len: int) -> Line2D:
    return Line2D([], [], color=PREFIX_COLOR, lw=2.5,
                  label=f"end of the observed prefix: steps 0-{prefix_len - 1} seen, the rest predicted")


def state_bars(axes: np.ndarray, states: dict[str, np.ndarray], names: Sequence[str] | None = None,
                extent: tuple[float, float] | None = None, legend_columns: int = 3) -> None:
    """Discrete states (T,) per named bar, one thin axes each, coloured by state (STATE_COLORS; negative entries,
    unlabelled or padded frames, grey), with a legend of the states that occur above the first, by `names`
    when given; with two bars or more, the first is taken to be relabelled to match the others. `extent`: the
    x range the T frames span (default: frame indices)."""
    cmap = ListedColormap(STATE_COLORS).with_extremes(bad="#c8c8c8")
    present = sorted({int(k) for bar in states.values() for k in np.unique(bar) if k >= 0})
    for ax, (name, bar) in zip(axes, states.items()):
        shown = np.where(bar >= 0, bar % len(STATE_COLORS), np.nan)
        ax.imshow(shown[None, :], cmap=cmap, vmin=-0.5, vmax=len(STATE_COLORS) - 0.5, aspect="auto",
                  interpolation="nearest", extent=None if extent is None else (*extent, 0.5, -0.5))
        ax.set_yticks([0], [name], fontsize=LABEL_PT)
    handles = [Patch(facecolor=STATE_COLORS[k % len(STATE_COLORS)],
                     label=names[k] if names is not None and k < len(names) else str(k)) for k in present]
    title = "state per frame" + (", inferred states relabelled to match the true ones" if len(states) > 1 else "")
    axes[0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                   ncols=min(len(handles), legend_columns),
                   title=title, title_fontsize=LEGEND_PT, alignment="left",
                   fontsize=LEGEND_PT, frameon=False, borderaxespad=0.1, handlelength=1.2, columnspacing=0.8)


def sequence_figure(rows: dict[str, torch.Tensor], prefix_len: int | None = None, title: str = "",
                    value_range: tuple[float, float] | None = None,
                    states: dict[str, torch.Tensor] | None = None, state_names: Sequence[str] | None = None) -> Figure:
    """One sequence as stacked panels, one per named row (T, D) (e.g. data, mean, samples): time on the x axis,
    observed dim on the y axis (pixel for [0, 1] data, channel otherwise), the value as colour with a shared
    colour bar over `value_range` (default: [0, 1] if the first row lies in it, else its range). NaN entries
    (steps past the sequence's end) are grey. With `prefix_len`, a red line at the end of the observed prefix,
    explained in a legend. With `states` (name -> (T,) integer states, e.g. inferred and true; -1 for none), a
    colour bar of the state per frame above the panels, its legend naming the states by `state_names`."""
    names = list(rows)
    values = {name: to_numpy(rows[name]) for name in names}
    bars = {name: states[name].detach().cpu().numpy() for name in states} if states else {}
    if value_range is None:
        first = values[names[0]]
        low, high = float(np.nanmin(first)), float(np.nanmax(first))
        value_range = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
    unit_range = tuple(value_range) == (0.0, 1.0)
    steps, dims = values[names[0]].shape
    ratios = [0.3] * len(bars) + [1.0] * len(names)
    fig, all_axes = new_figure(7.0, 1.6 + 1.25 * len(names) + 0.5 * len(bars), nrows=len(ratios), sharex=True,
                               gridspec_kw={"height_ratios": ratios})
    axes = all_axes[len(bars):]
    if bars:
        state_bars(all_axes[:len(bars), 0], bars, state_names)
    from matplotlib import colormaps

    cmap = colormaps[INTENSITY_CMAP].with_extremes(bad="#c8c8c8")
    image = None
    for ax, name in zip(axes[:, 0], names):
        image = ax.imshow(values[name].T, cmap=cmap, vmin=value_range[0], vmax=value_range[1], aspect="auto",
                          interpolation="nearest", origin="upper")
        if prefix_len is not None:
            ax.axvline(prefix_len - 0.5, color=PREFIX_COLOR, lw=2.5)
        ax.set_title(name, fontsize=LABEL_PT, loc="left")
        ax.set_ylabel("pixel" if unit_range else "channel", fontsize=LABEL_PT)
        ax.set_yticks([0, dims - 1])
    axes[-1, 0].set_xlabel("time step", fontsize=LABEL_PT)
    colorbar = fig.colorbar(image, ax=list(axes[:, 0]), fraction=0.05, pad=0.02)
    colorbar.set_label("intensity" if unit_range else "value", fontsize=LABEL_PT)
    colorbar.ax.tick_params(labelsize=TICK_PT)
    handles = [prefix_handle(prefix_len)] if prefix_len is not None else []
    if any(np.isnan(v).any() for v in values.values()):
        handles.append(Patch(facecolor="#c8c8c8", label="past the end of the sequence"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=LEGEND_PT, frameon=False)
    figure_title(fig, title)
    return fig


def strokes_figure(rows: dict[str, torch.Tensor], prefix_len: int | None = None, title: str = "") -> Figure:
    """One pen-stroke sequence per named row (T, 3) of (pen_lift, dx, dy), e.g. data, reconstruction,
    continuations, each drawn as a pen path from a start dot in its own panel (y downwards, as on a page): the
    pen's moves after a lift (pen_lift > 1/2) dotted grey, steps with NaN (past the sequence's end) skipped;
    with `prefix_len`, the steps from the prefix's end on in red. A legend explains the lines."""
    names = list(rows)
    ncols = len(names) if len(names) <= 2 else 2 if len(names) == 4 else 3
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(3.4 * ncols + 0.4, 3.2 * nrows + 1.4, nrows=nrows, ncols=ncols)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        seq = to_numpy(rows[name])
        seq = seq[~np.isnan(seq).any(1)]
        points = np.concatenate([np.zeros((1, 2)), seq[:, 1:3].cumsum(0)])  # (T + 1, 2)
        for t in range(len(seq)):  # one segment per step: from point t to t + 1, dotted if the pen was up
            late = prefix_len is not None and t >= prefix_len
            if t > 0 and seq[t - 1, 0] > 0.5:
                ax.plot(points[t:t + 2, 0], points[t:t + 2, 1], color=PEN_UP_COLOR, lw=1.2, ls=":")
            else:
                ax.plot(points[t:t + 2, 0], points[t:t + 2, 1], color=PREFIX_COLOR if late else "black", lw=1.8)
        ax.plot(0, 0, "o", color="black", ms=6)
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()
        ax.set_title(name, fontsize=LABEL_PT)
        ax.set_xlabel("pen x", fontsize=LABEL_PT)
        ax.set_ylabel("pen y", fontsize=LABEL_PT)
    handles = [Line2D([], [], color="black", marker="o", lw=2,
                      label="pen down" if prefix_len is None else f"steps 0-{prefix_len - 1} (observed prefix)")]
    if prefix_len is not None:
        handles.append(Line2D([], [], color=PREFIX_COLOR, lw=2, label="later steps (data: truth; others: model)"))
    handles.append(Line2D([], [], color=PEN_UP_COLOR, lw=1.5, ls=":", label="pen up"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=LEGEND_PT, frameon=False)
    figure_title(fig, title)
    return fig


def log_sequences(writer: Any, tag: str, step: int, rows: dict[str, torch.Tensor], prefix_len: int | None = None,
                  title: str = "Sequence", strokes: bool = False,
                  states: dict[str, torch.Tensor] | None = None, state_names: Sequence[str] | None = None) -> None:
    """One figure per sequence, `{tag}_0`, `{tag}_1`, ... (at most MAX_FIGURES): rows name -> (B, T, D) (with
    `strokes`, (B, T, 3) pen strokes, drawn by `strokes_figure`; else `sequence_figure`, on the colour range of
    the first row over all B sequences, with the discrete `states` name -> (B, T) as bars above)."""
    names = list(rows)
    first = to_numpy(rows[names[0]])
    low, high = float(np.nanmin(first)), float(np.nanmax(first))
    value_range = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
    for b in range(min(MAX_FIGURES, len(first))):
        one = {name: rows[name][b] for name in names}
        heading = f"{title} {b + 1}"
        fig = (strokes_figure(one, prefix_len, heading) if strokes
               else sequence_figure(one, prefix_len, heading, value_range,
                                    {name: bar[b] for name, bar in states.items()} if states else None,
                                    state_names))
        log_figure(writer, f"{tag}_{b}", fig, step)
