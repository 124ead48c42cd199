"""TensorBoard images and figures shared by the architectures."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torchvision.utils import make_grid


def log_image_grids(writer: Any, tag: str, step: int, reconstructions: tuple[torch.Tensor, torch.Tensor],
                    samples: torch.Tensor) -> None:
    """Data above reconstructions, and samples, as image grids. Images: (B, C, H, W) in [0, 1]."""
    data, recon = reconstructions
    pairs = torch.cat([data, recon]).float().cpu().clamp(0, 1)
    writer.add_image(f"{tag}/reconstructions", make_grid(pairs, nrow=len(data)), step)
    writer.add_image(f"{tag}/samples", make_grid(samples.float().cpu().clamp(0, 1), nrow=8), step)


def log_scatter(writer: Any, tag: str, step: int, **point_sets: torch.Tensor) -> None:
    """2-D point sets (name -> (N, 2)) drawn in one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for name, points in point_sets.items():
        points = points.detach().float().cpu()
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, label=name)
    ax.legend(loc="upper right")
    ax.set_aspect("equal")
    writer.add_figure(tag, fig, step)
    plt.close(fig)


def log_gmm_clusters(writer: Any, tag: str, step: int, latent: torch.Tensor, data: torch.Tensor,
                     assignments: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
                     decode: Callable[[torch.Tensor], torch.Tensor] | None = None, min_weight: float = 0.02) -> None:
    """Two panels: latent points (N, 2) coloured by their component with the 2-sigma ellipses of the
    components whose weight exceeds `min_weight` (means (K, 2), covs (K, 2, 2)); and the data (N, 2)
    in the same colours, with the ellipses pushed through `decode` (latent (M, 2) -> data (M, 2))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = torch.linspace(0, 2 * math.pi, 100, dtype=means.dtype, device=means.device)
    circle = torch.stack([angles.cos(), angles.sin()], -1)  # (100, 2)
    shown = (weights > min_weight).nonzero().flatten().tolist()
    ellipses = means[shown, None, :] + 2.0 * circle @ torch.linalg.cholesky(covs[shown]).mT  # (k, 100, 2)
    colors = plt.get_cmap("tab20")
    fig, (ax_latent, ax_data) = plt.subplots(1, 2, figsize=(8, 4))
    for ax, points, curves in [(ax_latent, latent, ellipses),
                               (ax_data, data, decode(ellipses) if decode is not None else None)]:
        points = points.detach().float().cpu()
        ax.scatter(points[:, 0], points[:, 1], s=4, c=[colors(int(k) % 20) for k in assignments.cpu()])
        if curves is not None:
            for k, curve in zip(shown, curves.detach().float().cpu()):
                ax.plot(curve[:, 0], curve[:, 1], color=colors(k % 20), lw=1.5)
        ax.set_aspect("equal")
    ax_latent.set_title("latent E[x], 2-sigma ellipses")
    ax_data.set_title("data by component")
    fig.tight_layout()
    writer.add_figure(tag, fig, step)
    plt.close(fig)


def log_sequence_panels(writer: Any, tag: str, step: int, rows: dict[str, torch.Tensor],
                        prefix_len: int | None = None) -> None:
    """For each sequence, one panel of stacked images over time (time left to right, dims top to bottom), one
    image per named row (B, T, P), e.g. data, a predicted mean and samples; with `prefix_len`, a red line
    at the end of the observed prefix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    batch, _, height = rows[names[0]].shape
    fig, axes = plt.subplots(batch, 1, figsize=(8, 1.2 * len(names) * batch / 2 + 0.5), squeeze=False)
    for b, ax in enumerate(axes[:, 0]):
        image = torch.cat([rows[name][b].detach().float().cpu().T for name in names], 0)  # (rows * P, T)
        ax.imshow(image.clamp(0, 1).numpy(), cmap="gray", aspect="auto", interpolation="nearest")
        if prefix_len is not None:
            ax.axvline(prefix_len - 0.5, color="r", lw=1.5)
        ax.set_yticks([height * (i + 0.5) for i in range(len(names))], names, fontsize=7)
        for i in range(1, len(names)):
            ax.axhline(height * i - 0.5, color="tab:blue", lw=0.5)
        ax.set_xlabel("step", fontsize=7)
    fig.tight_layout()
    writer.add_figure(tag, fig, step)
    plt.close(fig)


def log_strokes(writer: Any, tag: str, step: int, rows: dict[str, torch.Tensor],
                prefix_len: int | None = None) -> None:
    """Pen-stroke sequences (B, T, 3) of (pen_lift, dx, dy), one named row each (e.g. data, reconstruction,
    continuations), drawn as pen paths: a grid of B x rows panels, strokes broken where the pen lifts
    (pen_lift > 1/2); with `prefix_len`, the steps after the prefix in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    batch = len(rows[names[0]])
    fig, axes = plt.subplots(batch, len(names), figsize=(2.2 * len(names), 2.0 * batch), squeeze=False)
    for col, name in enumerate(names):
        axes[0, col].set_title(name, fontsize=8)
        for b in range(batch):
            seq = rows[name][b].detach().double().cpu()
            points = torch.cat([torch.zeros(1, 2, dtype=seq.dtype), seq[:, 1:3].cumsum(0)])  # (T + 1, 2)
            ax = axes[b, col]
            for t in range(len(seq)):  # one segment per step: from point t to t + 1, unless the pen was up
                if t > 0 and seq[t - 1, 0] > 0.5:
                    continue
                late = prefix_len is not None and t >= prefix_len
                ax.plot(points[t:t + 2, 0], -points[t:t + 2, 1], color="r" if late else "k", lw=1)
            ax.set_aspect("equal")
            ax.axis("off")
    fig.tight_layout()
    writer.add_figure(tag, fig, step)
    plt.close(fig)


def log_adjacency(writer: Any, tag: str, step: int, probs: torch.Tensor, hard: torch.Tensor) -> None:
    """Edge probabilities and the hard graph of a learned DAG as images (row m, column n: edge m -> n),
    each cell drawn 16 px wide."""
    for name, matrix in (("edge_probs", probs), ("adjacency", hard)):
        image = matrix.detach().float().cpu().clamp(0, 1).repeat_interleave(16, 0).repeat_interleave(16, 1)
        writer.add_image(f"{tag}/{name}", image.unsqueeze(0), step)
