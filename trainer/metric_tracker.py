"""Running means of the scalars a model returns, kept on the device (no sync per step)."""
from __future__ import annotations

import torch

from utils.distributed import all_reduce_sum


class MetricTracker:
    """Example-weighted sums of scalar tensors, one stacked vector per set of keys; `result()` all-reduces once
    over ranks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[tuple[str, ...], torch.Tensor] = {}  # keys -> (len(keys),) sums
        self._count: int | torch.Tensor = 0

    def update(self, values: dict[str, torch.Tensor], n: int, taken: torch.Tensor | None = None) -> None:
        """Add `values` (0-d tensors) of `n` examples; a step whose 0-d bool `taken` is False adds nothing
        (a skipped step, decided on the device without a sync)."""
        keys = tuple(values)
        stacked = torch.stack([value.detach().float() for value in values.values()]) * n
        if taken is not None:
            stacked = torch.where(taken, stacked, 0.0)
        self._sums[keys] = self._sums[keys] + stacked if keys in self._sums else stacked
        self._count = self._count + (n if taken is None else taken.long() * n)

    def result(self) -> dict[str, float]:
        """Means over every example seen on every rank."""
        if not self._sums:
            return {}
        sums: dict[str, torch.Tensor] = {}
        for keys, stacked in self._sums.items():
            for key, value in zip(keys, stacked):
                sums[key] = sums[key] + value if key in sums else value
        keys = sorted(sums)
        device = sums[keys[0]].device
        count = torch.as_tensor(self._count, device=device).double().reshape(1)
        packed = torch.cat([torch.stack([sums[k] for k in keys]).double(), count])
        packed = all_reduce_sum(packed).tolist()
        return {k: v / packed[-1] for k, v in zip(keys, packed[:-1])}
