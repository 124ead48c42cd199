"""The one Trainer used by every architecture."""
from trainer.trainer import Trainer

__all__ = ["Trainer"]
