"""The structured VAEs' own figures: SVAE-GMM clusters (latent and data space) and SVAE-SLDS segmentations.
Shapes: B points, K components, n = 2 latent dims, T frames, D channels."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from model.figures import INTENSITY_CMAP, LABEL_PT, LEGEND_PT, TICK_PT, figure_title, legend_columns, \
    log_figure, new_figure, to_numpy

#: at most this many channels are drawn as traces, each named (more: as a heat map)
MAX_TRACES = 12
#: at most this many components in one column of the clusters' legend
LEGEND_ROWS = 8
STATE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                "#1f78b4", "#e31a1c", "#a6cee3", "#000000")
UNLABELLED_COLOR = "#c8c8c8"


def _component_colors(weights: torch.Tensor, shown: list[int]) -> dict[int, tuple]:
    """A colour per shown component, the heaviest getting the first (strongest) colours of tab10."""
    from matplotlib import colormaps

    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](2 * i + 1) for i in range(10)]
    order = sorted(shown, key=lambda k: -float(weights[k]))
    return {k: palette[rank % len(palette)] for rank, k in enumerate(order)}


def gmm_cluster_figures(latent: torch.Tensor, data: torch.Tensor | None, assignments: torch.Tensor,
                        weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
                        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        min_weight: float = 0.02) -> dict[str, Figure]:
    """Two figures, "latent" and "data": latent points (M, 2) coloured by their most likely component
    (assignments (M,)) with the 2-sigma ellipses of the components whose weight (K,) exceeds `min_weight`
    (means (K, 2), covs (K, 2, 2)); and the data (M, 2) in the same colours with the ellipses pushed through
    `decode` (latent (..., 2) -> data (..., 2)); data of another dimension (None) get no figure. Points of
    lighter components are grey. A legend beside the plot gives each component's weight."""
    angles = torch.linspace(0, 2 * math.pi, 100, dtype=means.dtype, device=means.device)
    circle = torch.stack([angles.cos(), angles.sin()], -1)  # (100, 2)
    shown = sorted((weights > min_weight).nonzero().flatten().tolist(), key=lambda k: -float(weights[k]))
    ellipses = means[shown, None, :] + 2.0 * circle @ torch.linalg.cholesky(covs[shown]).mT  # (k, 100, 2)
    colors = _component_colors(weights, shown)
    other = (0.6, 0.6, 0.6, 1.0)
    point_colors = [colors.get(int(k), other) for k in assignments.cpu()]
    handles = [Line2D([], [], color=colors[k], marker="o", lw=2.0, label=f"{k}: {float(weights[k]):.2f}")
               for k in shown]
    if any(int(k) not in colors for k in assignments.cpu()):
        handles.append(Line2D([], [], color=other, marker="o", lw=0, label=f"<= {min_weight}"))
    figures = {}
    panels = [("latent", latent, ellipses, "latent dimension 1", "latent dimension 2",
               "Latent means E[x] by component\nlines: 2-sigma ellipses"),
              ("data", data, decode(ellipses) if decode is not None and shown and data is not None else None,
               "data dimension 1", "data dimension 2",
               "Data coloured by their latent's component\nlines: decoded 2-sigma ellipses")]
    for name, points, curves, xlabel, ylabel, title in panels:
        if points is None:
            continue
        fig, axes = new_figure()
        ax = axes[0, 0]
        points = to_numpy(points)
        ax.scatter(points[:, 0], points[:, 1], s=5, c=point_colors, alpha=0.8)
        if curves is not None:
            for k, curve in zip(shown, to_numpy(curves)):
                ax.plot(curve[:, 0], curve[:, 1], color=colors[k], lw=2.0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(xlabel, fontsize=LABEL_PT)
        ax.set_ylabel(ylabel, fontsize=LABEL_PT)
        fig.legend(handles=handles, title="component:\nweight", loc="outside right center", fontsize=LEGEND_PT,
                   title_fontsize=LEGEND_PT, ncols=math.ceil(len(handles) / LEGEND_ROWS), handlelength=1.2,
                   columnspacing=0.8, frameon=False)
        figure_title(fig, title)
        figures[name] = fig
    return figures


def log_gmm_clusters(writer: Any, tag: str, step: int, **kwargs: Any) -> None:
    """`{tag}/clusters_latent` and `{tag}/clusters_data`, drawn by `gmm_cluster_figures(**kwargs)`."""
    for name, fig in gmm_cluster_figures(**kwargs).items():
        log_figure(writer, f"{tag}/clusters_{name}", fig, step)


def state_bars(fig: Figure, axes: Sequence[Axes], states: dict[str, np.ndarray], names: Sequence[str] | None,
               extent: tuple[float, float]) -> None:
    """Discrete states (T,) per named bar over the x range `extent`, one axes each, coloured by state
    (STATE_COLORS; negative entries, unlabelled frames, grey), with a legend of the states that occur across the
    bottom of `fig`, by `names` when given; with two bars or more, the first is taken to be relabelled to match the
    others."""
    cmap = ListedColormap(STATE_COLORS).with_extremes(bad=UNLABELLED_COLOR)
    present = sorted({int(k) for bar in states.values() for k in np.unique(bar) if k >= 0})
    for ax, (name, bar) in zip(axes, states.items()):
        shown = np.where(bar >= 0, bar % len(STATE_COLORS), np.nan)
        ax.imshow(shown[None, :], cmap=cmap, vmin=-0.5, vmax=len(STATE_COLORS) - 0.5, aspect="auto",
                  interpolation="nearest", extent=(*extent, 0.5, -0.5))
        ax.set_yticks([0], [name], fontsize=LABEL_PT)
    handles = [Patch(facecolor=STATE_COLORS[k % len(STATE_COLORS)],
                     label=names[k] if names is not None and k < len(names) else str(k)) for k in present]
    if any((bar < 0).any() for bar in states.values()):
        handles.append(Patch(facecolor=UNLABELLED_COLOR, label="unlabelled"))
    title = "state per frame" + ("; inferred states matched to the annotated ones" if len(states) > 1 else "")
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_columns(handles), title=title,
               title_fontsize=LEGEND_PT, fontsize=LEGEND_PT, frameon=False, handlelength=1.2, columnspacing=0.8)


def _time_axis(steps: int, frame_rate: float | None) -> tuple[np.ndarray, tuple[float, float], str]:
    """The time (T,) of each of `steps` frames, in seconds with `frame_rate` (frames per second), else in frames;
    the x range the frames span; and the axis label."""
    time = np.arange(steps) / frame_rate if frame_rate is not None else np.arange(steps, dtype=np.float64)
    step = time[1] - time[0] if steps > 1 else 1.0
    return time, (time[0] - step / 2, time[-1] + step / 2), "time (s)" if frame_rate is not None else "time step"


def segmentation_figure(states: dict[str, torch.Tensor], title: str = "", state_names: Sequence[str] | None = None,
                        frame_rate: float | None = None) -> Figure:
    """One sequence's segmentation: bars of discrete states per frame (name -> (T,), e.g. the inferred states
    relabelled to match the annotated ones, then the annotations; -1 grey), their legend naming the states by
    `state_names` below. The x axis is in seconds with `frame_rate` (frames per second), else in frames."""
    bars = {name: bar.detach().cpu().numpy() for name, bar in states.items()}
    _, extent, time_label = _time_axis(len(next(iter(bars.values()))), frame_rate)
    fig, axes = new_figure(nrows=len(bars), sharex=True)
    state_bars(fig, axes[:, 0], bars, state_names, extent)
    axes[-1, 0].set_xlim(*extent)
    axes[-1, 0].set_xlabel(time_label, fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig


def channels_figure(data: torch.Tensor, title: str = "", channel_names: Sequence[str] | None = None,
                    frame_rate: float | None = None) -> Figure:
    """One sequence's data (T, D): each channel's trace, offset one below the other and named on the y axis by
    `channel_names` (D <= MAX_TRACES), or a heat map with a colour bar (more channels). The x axis is in seconds
    with `frame_rate` (frames per second), else in frames, as in `segmentation_figure`."""
    values = to_numpy(data)
    steps, dims = values.shape
    time, extent, time_label = _time_axis(steps, frame_rate)
    fig, axes = new_figure()
    ax = axes[0, 0]
    if dims <= MAX_TRACES:
        names = list(channel_names) if channel_names is not None else [f"channel {p}" for p in range(dims)]
        spread = np.nanpercentile(np.abs(values), 99) if np.isfinite(values).any() else 1.0
        gap = 2.0 * max(float(spread), 1e-6)
        offsets = -gap * np.arange(dims)
        for p in range(dims):
            ax.plot(time, values[:, p] + offsets[p], lw=0.8, color=STATE_COLORS[8] if p % 2 else "#404040")
        ax.set_yticks(offsets, names)
        ax.set_ylim(offsets[-1] - gap * 0.6, gap * 0.6)
        ax.set_ylabel("channel (traces offset)", fontsize=LABEL_PT)
    else:
        from matplotlib import colormaps

        image = ax.imshow(values.T, cmap=colormaps[INTENSITY_CMAP].with_extremes(bad=UNLABELLED_COLOR),
                          aspect="auto", interpolation="nearest", extent=(*extent, dims - 0.5, -0.5))
        ax.set_ylabel("channel", fontsize=LABEL_PT)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        colorbar.set_label("value", fontsize=LABEL_PT)
        colorbar.ax.tick_params(labelsize=TICK_PT)
    ax.set_xlim(*extent)
    ax.set_xlabel(time_label, fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig


def log_segmentation(writer: Any, tag: str, step: int, states: dict[str, torch.Tensor], data: torch.Tensor,
                     sequence: str, state_names: Sequence[str] | None = None,
                     channel_names: Sequence[str] | None = None, frame_rate: float | None = None) -> None:
    """Two cards for one sequence named `sequence`: `{tag}`, its segmentation (`segmentation_figure` of the
    states name -> (T,)), and `{tag}_data`, its data (T, D) over the same time axis (`channels_figure`)."""
    log_figure(writer, tag, segmentation_figure(states, f"Segmentation, sequence {sequence}", state_names,
                                                frame_rate), step)
    log_figure(writer, f"{tag}_data", channels_figure(data, f"Data, sequence {sequence}", channel_names, frame_rate),
               step)
