"""Natural-gradient SVI for the conjugate global factors of the SVAEs (SVAE.md section 2).

    eta <- eta + rho (eta0 + (N / B) sum_batch E_q[t] - eta)

with the minibatch statistics detached. For 0 < rho <= 1 this is a convex combination of
valid natural parameters, so eta stays valid. The update is applied by the model's
`after_optimizer_step` hook, never by the network optimizer.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


class NaturalGradientSVI:
    """Collects minibatch statistics during training forward passes and applies the SVI step.

    The accumulator is a plain attribute of the model, so DataParallel replicas (which share
    the model's attributes) add to the same list; `step` sums what was added since the last
    step and, under torch.distributed, all-reduces it so that every rank applies the update
    of the global batch.

    Args:
        num_train: N, the size of the training set.
        rho: step size in (0, 1].
    """

    def __init__(self, num_train: int, rho: float):
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {num_train}")
        self.num_train = num_train
        self.rho = rho
        self._pending: list[tuple[list[torch.Tensor], int]] = []

    def accumulate(self, stats: Sequence[torch.Tensor], count: int) -> None:
        """Add the summed statistics of `count` data points (detached)."""
        self._pending.append(([s.detach() for s in stats], count))

    def clear(self) -> None:
        """Forget what was accumulated (a skipped step)."""
        self._pending.clear()

    def step(self, eta: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> None:
        """Update the tensors of `eta` in place from the statistics accumulated since the last step
        (no-op when there are none)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        device = eta[0].device
        flat = torch.stack([torch.cat([s.to(device).flatten() for s in stats]) for stats, _ in pending]).sum(0)
        count = torch.tensor([float(sum(n for _, n in pending))], dtype=flat.dtype, device=device)
        flat = torch.cat([flat, count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flat)
        scale = self.num_train / float(flat[-1])
        offset = 0
        for target, base in zip(eta, prior):
            size = target.numel()
            stats = flat[offset:offset + size].view_as(target)
            target.lerp_(base + scale * stats, self.rho)
            offset += size
