"""TensorBoard images and figures shared by the architectures."""
from __future__ import annotations

from typing import Any

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
