"""Running means of the scalars a model returns, kept on the device (no sync per step)."""
from __future__ import annotations

import torch

from utils.distributed import all_reduce_sum


class MetricTracker:
    """Example-weighted sums of scalar tensors; `result()` all-reduces once over ranks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def update(self, values: dict[str, torch.Tensor], n: int) -> None:
        for key, value in values.items():
            value = value.detach().float() * n
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += n

    def result(self) -> dict[str, float]:
        """Means over every example seen on every rank."""
        if not self._sums:
            return {}
        keys = sorted(self._sums)
        device = self._sums[keys[0]].device
        packed = torch.stack([self._sums[k].to(device) for k in keys] +
                             [torch.tensor(float(self._count), device=device)]).double()
        packed = all_reduce_sum(packed).tolist()
        return {k: v / packed[-1] for k, v in zip(keys, packed[:-1])}
