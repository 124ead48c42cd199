"""The structured VAEs' own figures: SVAE-GMM clusters (latent and data space) and SVAE-SLDS segmentations.
Shapes: B points, K components, n = 2 latent dims, T frames, D channels."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from model.figures import INTENSITY_CMAP, LABEL_PT, LEGEND_PT, STATE_COLORS, TICK_PT, TITLE_PT, figure_title, \
    log_figure, new_figure, state_bars, to_numpy

#: at most this many channels are drawn as traces (more: as a heat map)
MAX_TRACES = 16


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
    lighter components are grey."""
    angles = torch.linspace(0, 2 * math.pi, 100, dtype=means.dtype, device=means.device)
    circle = torch.stack([angles.cos(), angles.sin()], -1)  # (100, 2)
    shown = sorted((weights > min_weight).nonzero().flatten().tolist(), key=lambda k: -float(weights[k]))
    ellipses = means[shown, None, :] + 2.0 * circle @ torch.linalg.cholesky(covs[shown]).mT  # (k, 100, 2)
    colors = _component_colors(weights, shown)
    other = (0.6, 0.6, 0.6, 1.0)
    point_colors = [colors.get(int(k), other) for k in assignments.cpu()]
    handles = [Line2D([], [], color=colors[k], marker="o", lw=2.5, label=f"{k}: weight {float(weights[k]):.2f}")
               for k in shown]
    if any(int(k) not in colors for k in assignments.cpu()):
        handles.append(Line2D([], [], color=other, marker="o", lw=0, label=f"weight <= {min_weight}"))
    figures = {}
    panels = [("latent", latent, ellipses, "latent dimension 1", "latent dimension 2",
               "Latent means E[x] by most likely component\nlines: 2-sigma ellipses of the components"),
              ("data", data, decode(ellipses) if decode is not None and shown and data is not None else None,
               "data dimension 1",
               "data dimension 2", "Data coloured by its latent's component\nlines: decoded 2-sigma ellipses")]
    for name, points, curves, xlabel, ylabel, title in panels:
        if points is None:
            continue
        fig, axes = new_figure(7.6, 5.6)
        ax = axes[0, 0]
        points = to_numpy(points)
        ax.scatter(points[:, 0], points[:, 1], s=10, c=point_colors, alpha=0.8)
        if curves is not None:
            for k, curve in zip(shown, to_numpy(curves)):
                ax.plot(curve[:, 0], curve[:, 1], color=colors[k], lw=2.5)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(xlabel, fontsize=LABEL_PT)
        ax.set_ylabel(ylabel, fontsize=LABEL_PT)
        ax.set_title(title, fontsize=TITLE_PT)
        fig.legend(handles=handles, title="component", loc="outside right center", fontsize=LEGEND_PT,
                   title_fontsize=LEGEND_PT)
        figures[name] = fig
    return figures


def log_gmm_clusters(writer: Any, tag: str, step: int, **kwargs: Any) -> None:
    """`{tag}/clusters_latent` and `{tag}/clusters_data`, drawn by `gmm_cluster_figures(**kwargs)`."""
    for name, fig in gmm_cluster_figures(**kwargs).items():
        log_figure(writer, f"{tag}/clusters_{name}", fig, step)


def segmentation_figure(states: dict[str, torch.Tensor], data: torch.Tensor, title: str = "",
                        state_names: Sequence[str] | None = None, channel_names: Sequence[str] | None = None,
                        frame_rate: float | None = None) -> Figure:
    """One sequence's segmentation: bars of discrete states per frame (name -> (T,), e.g. the inferred states
    relabelled to match the annotated ones, then the annotations; -1 grey), their legend naming the states by
    `state_names`, and under them the data (T, D): each channel's trace, offset one below the other and named
    on the y axis by `channel_names` (D <= MAX_TRACES), or a heat map (more channels). The x axis is in
    seconds with `frame_rate` (frames per second), else in frames."""
    values = to_numpy(data)
    steps, dims = values.shape
    seconds = frame_rate is not None
    time = np.arange(steps) / frame_rate if seconds else np.arange(steps, dtype=np.float64)
    step = time[1] - time[0] if steps > 1 else 1.0
    extent = (time[0] - step / 2, time[-1] + step / 2)
    bars = {name: bar.detach().cpu().numpy() for name, bar in states.items()}
    traces = dims <= MAX_TRACES
    height = 2.2 + 0.45 * len(bars) + (0.32 * dims + 0.6 if traces else 2.4)
    ratios = [0.35] * len(bars) + [max(1.0, 0.32 * dims / 0.45) if traces else 3.0]
    fig, axes = new_figure(9.0, height, nrows=len(ratios), sharex=True, gridspec_kw={"height_ratios": ratios})
    state_bars(axes[:len(bars), 0], bars, state_names, extent, legend_columns=4)
    ax = axes[-1, 0]
    names = list(channel_names) if channel_names is not None else [f"channel {p}" for p in range(dims)]
    if traces:
        spread = np.nanpercentile(np.abs(values), 99) if np.isfinite(values).any() else 1.0
        gap = 2.0 * max(float(spread), 1e-6)
        offsets = -gap * np.arange(dims)
        for p in range(dims):
            ax.plot(time, values[:, p] + offsets[p], lw=1.0, color=STATE_COLORS[8] if p % 2 else "#404040")
        ax.set_yticks(offsets, names, fontsize=max(7.0, min(TICK_PT, 110.0 / dims)))
        ax.set_ylim(offsets[-1] - gap * 0.7, gap * 0.7)
        ax.set_ylabel("channel (traces offset)", fontsize=LABEL_PT)
    else:
        from matplotlib import colormaps

        image = ax.imshow(values.T, cmap=colormaps[INTENSITY_CMAP].with_extremes(bad="#c8c8c8"), aspect="auto",
                          interpolation="nearest", extent=(*extent, dims - 0.5, -0.5))
        ax.set_ylabel("channel", fontsize=LABEL_PT)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        colorbar = fig.colorbar(image, ax=list(axes[:, 0]), fraction=0.05, pad=0.02)  # every panel keeps one width
        colorbar.set_label("value", fontsize=LABEL_PT)
        colorbar.ax.tick_params(labelsize=TICK_PT)
    ax.set_xlim(*extent)
    ax.set_xlabel("time (s)" if seconds else "time step", fontsize=LABEL_PT)
    figure_title(fig, title)
    return fig
