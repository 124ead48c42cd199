"""k-means: Lloyd's algorithm from a k-means++ start (the AR-HMM start's hard assignments, the benchmarks'
baselines)."""
from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator,
           max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows x (N, D) into k clusters: (assignments (N,), centres (k, D)). The k-means++ draws come from
    `generator` alone."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(k - 1):
        nearest = torch.cdist(x, centres).pow(2).min(1).values
        centres = torch.cat([centres, x[torch.multinomial(nearest + 1e-300, 1, generator=generator)]])
    assignments = torch.full((len(x),), -1, device=x.device)
    for _ in range(max_iter):
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assignments):
            break
        assignments = new
        counts = torch.bincount(assignments, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assignments, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return assignments, centres
