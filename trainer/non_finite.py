"""Non-finite losses, watched on the device: each step records whether its loss was finite without
reading anything back; the Trainer reads the record once per `log_every` steps and at the end of
every epoch (one host synchronisation), then stops or counts the skipped steps (`trainer.nan_policy`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NonFiniteSteps:
    """What a `NonFiniteWatch.read` found: the number of non-finite steps since the last read, and the first
    one's global step and loss."""

    count: int
    first_step: int
    first_loss: float


class NonFiniteWatch:
    """Device-side record of the steps whose loss was not finite (0-d tensors, updated without a sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self._count = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_step = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_loss = torch.zeros((), device=self.device)

    def record(self, finite: torch.Tensor, loss: torch.Tensor, step: int) -> None:
        """Note step `step` (global, 1-based): `finite` is a 0-d bool tensor, `loss` the step's loss (0-d)."""
        first = ~finite & (self._count == 0)
        self._first_step = torch.where(first, step, self._first_step)
        self._first_loss = torch.where(first, loss.detach().float(), self._first_loss)
        self._count = self._count + (~finite).long()

    def read(self) -> NonFiniteSteps | None:
        """The non-finite steps since the last read (None: there were none); one host synchronisation."""
        count, first_step, first_loss = torch.stack([self._count.double(), self._first_step.double(),
                                                     self._first_loss.double()]).tolist()
        if count == 0:
            return None
        found = NonFiniteSteps(int(count), int(first_step), first_loss)
        self._reset()
        return found
