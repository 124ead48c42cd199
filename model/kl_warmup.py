"""Linear KL warm-up shared by the architectures: the KL term's weight in the training loss rises
from 0 to 1 over `kl_warmup_epochs` epochs, driven by the Trainer's epoch hook and saved with
the schedule state (so a resumed run continues the schedule)."""
from __future__ import annotations

from typing import Any


class KLWarmup:
    """Mixin for a BaseModel; call `init_kl_warmup(epochs)` in __init__ (0: the weight is always 1)."""

    kl_warmup_epochs: int = 0
    epochs_done: int = 0

    def init_kl_warmup(self, kl_warmup_epochs: int) -> None:
        if kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {kl_warmup_epochs}")
        self.kl_warmup_epochs = kl_warmup_epochs
        self.epochs_done = 0

    @property
    def kl_weight(self) -> float:
        if self.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, self.epochs_done / self.kl_warmup_epochs)

    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_done = epoch

    def schedule_state(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.epochs_done = state.get("epochs_done", 0)

    def schedule_values(self) -> dict[str, float]:
        return {"kl_weight": self.kl_weight}
