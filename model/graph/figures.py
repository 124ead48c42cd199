"""The graph VAEs' own figures: learned edge probabilities and adjacency matrices as heat maps over (parent,
child) node pairs, with the pairs the DAG order forbids hatched. Shapes: N nodes."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from model.figures import LABEL_PT, LEGEND_PT, TICK_PT, card_pt, figure_title, log_figure, new_figure, \
    to_numpy

PROB_CMAP = "viridis"  # perceptually uniform: 0.67 and 0.78 differ in hue and lightness
NOT_ALLOWED = dict(facecolor="#e4e4e4", edgecolor="#9a9a9a", hatch="///", linewidth=0.0)
NOT_ALLOWED_LABEL = "not allowed:\na parent needs\na higher index\n(DAG order)"
#: the heat maps' height (inches): the figure's less its title and x axis
MATRIX_HEIGHT = 2.0
EDGE_COLOR, NO_EDGE_COLOR = "#2c5d8f", "#ffffff"


def _matrix_axes(ax: Axes, size: int, parent_label: str, child_label: str) -> None:
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xlabel(child_label, fontsize=LABEL_PT)
    ax.set_ylabel(parent_label, fontsize=LABEL_PT)
    ax.set_xticks(np.arange(size + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(size + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#7f7f7f", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)


def _mark_not_allowed(ax: Axes, allowed: np.ndarray) -> bool:
    """Hatched light-grey cells with a dash where `allowed` (N, N) is False; whether there were any."""
    for m, n in zip(*np.nonzero(~allowed)):
        ax.add_patch(Rectangle((n - 0.5, m - 0.5), 1, 1, **NOT_ALLOWED))
        ax.text(n, m, "–", ha="center", va="center", fontsize=_cell_font(len(allowed)), color="#404040")
    return bool((~allowed).any())


def _cell_font(size: int) -> float:
    """The font size (pt) of the numbers in a heat map of `size` x `size` cells: "0.67" fills about 2/3 of a cell,
    but no smaller than TICK_PT."""
    cell_pt = 72 * MATRIX_HEIGHT / size
    return float(np.clip(0.3 * cell_pt, TICK_PT, card_pt(13)))


def edge_probs_figure(probs: torch.Tensor, mask: torch.Tensor, title: str, parent_label: str = "parent node m",
                      child_label: str = "child node n") -> Figure:
    """Edge probabilities (N, N), [m, n] = P(m -> n), as a heat map with the value in every allowed cell
    (mask (N, N) nonzero), a 0-1 colour bar, and the edges the mask forbids hatched grey with a dash."""
    probs, allowed = to_numpy(probs), to_numpy(mask) > 0
    size = len(probs)
    fig, axes = new_figure()
    ax = axes[0, 0]
    image = ax.imshow(np.where(allowed, probs, np.nan), cmap=PROB_CMAP, vmin=0, vmax=1, interpolation="nearest")
    for m, n in zip(*np.nonzero(allowed)):
        value = probs[m, n]
        ax.text(n, m, f"{value:.2f}", ha="center", va="center", fontsize=_cell_font(size),
                color="white" if value < 0.55 else "black")
    _matrix_axes(ax, size, parent_label, child_label)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    colorbar.set_label("P(parent → child)", fontsize=LABEL_PT)
    colorbar.ax.tick_params(labelsize=TICK_PT)
    if _mark_not_allowed(ax, allowed):
        fig.legend(handles=[Patch(**{**NOT_ALLOWED, "linewidth": 1.0}, label=NOT_ALLOWED_LABEL)],
                   loc="outside right center", fontsize=LEGEND_PT, frameon=False)
    figure_title(fig, title)
    return fig


def adjacency_figure(hard: torch.Tensor, mask: torch.Tensor, title: str, parent_label: str = "parent node m",
                     child_label: str = "child node n") -> Figure:
    """A hard 0/1 graph (N, N), [m, n] = 1 for an edge m -> n, as a grid of cells: edges filled and marked "1",
    absent edges white with "0", the edges the mask (N, N) forbids hatched grey with a dash; a second line of the
    title counts the edges."""
    hard, allowed = to_numpy(hard) > 0.5, to_numpy(mask) > 0
    size = len(hard)
    fig, axes = new_figure()
    ax = axes[0, 0]
    ax.imshow(np.where(allowed & hard, 1.0, 0.0), cmap=ListedColormap([NO_EDGE_COLOR, EDGE_COLOR]), vmin=0, vmax=1,
              interpolation="nearest")
    for m, n in zip(*np.nonzero(allowed)):
        ax.text(n, m, "1" if hard[m, n] else "0", ha="center", va="center", fontsize=_cell_font(size),
                color="white" if hard[m, n] else "#404040")
    _matrix_axes(ax, size, parent_label, child_label)
    handles = [Patch(facecolor=EDGE_COLOR, edgecolor="#7f7f7f", label="1: edge"),
               Patch(facecolor=NO_EDGE_COLOR, edgecolor="#7f7f7f", label="0: no edge")]
    if _mark_not_allowed(ax, allowed):
        handles.append(Patch(**{**NOT_ALLOWED, "linewidth": 1.0}, label=NOT_ALLOWED_LABEL))
    fig.legend(handles=handles, loc="outside right center", fontsize=LEGEND_PT, frameon=False)
    edges, possible = int((hard & allowed).sum()), int(allowed.sum())  # the title ends with the count
    figure_title(fig, f"{title}\n{edges} of {possible} allowed on (p > 0.5)")
    return fig


def log_graph(writer: Any, tag: str, step: int, probs: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor,
              name: str = "Learned graph", parent_label: str = "parent node m",
              child_label: str = "child node n") -> None:
    """`{tag}/edge_probs` and `{tag}/adjacency` of a learned graph: probabilities (N, N) and hard graph (N, N),
    [m, n] for the edge m -> n, with the edges mask (N, N) allows."""
    log_figure(writer, f"{tag}/edge_probs", edge_probs_figure(
        probs, mask, f"{name}:\nedge probabilities", parent_label, child_label), step)
    log_figure(writer, f"{tag}/adjacency", adjacency_figure(
        hard, mask, f"{name}: hard edges", parent_label, child_label), step)
