"""Linear KL warm-up shared by the architectures: the KL term's weight in the training loss rises
from 0 to 1 over `kl_warmup_epochs` epochs, driven by the Trainer's `set_epochs_done` call and saved with
the schedule state (so a resumed run continues the schedule).

`forward` reads schedule values from 0-d buffers (not saved: they follow from `epochs_done`), so that
a compiled training step sees a new value without recompiling (a Python number would be a constant
of the compiled graph)."""
from __future__ import annotations

from typing import Any

import torch


class KLWarmup:
    """Mixin for a BaseModel; call `init_kl_warmup(epochs)` in __init__ (0: the weight is always 1)."""

    kl_warmup_epochs: int = 0
    epochs_done: int = 0

    def init_kl_warmup(self, kl_warmup_epochs: int) -> None:
        if kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {kl_warmup_epochs}")
        self.kl_warmup_epochs = kl_warmup_epochs
        self.epochs_done = 0
        self.register_buffer("kl_weight", torch.zeros((), dtype=torch.float64), persistent=False)  # this epoch
        self.update_schedule()

    def update_schedule(self) -> None:
        """Set the schedule buffers from `epochs_done` (in place; mixins extend it)."""
        weight = 1.0 if self.kl_warmup_epochs == 0 else min(1.0, self.epochs_done / self.kl_warmup_epochs)
        self.kl_weight.fill_(weight)

    def set_epochs_done(self, epochs: int) -> None:
        self.epochs_done = epochs
        self.update_schedule()

    def schedule_state(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.epochs_done = state.get("epochs_done", 0)
        self.update_schedule()

    def schedule_values(self) -> dict[str, float]:
        return {"kl_weight": self.kl_weight.item()}
