"""The orchestration layer above the models and the data: the one Trainer used by every architecture
(trainer.py), the data and model of a config (components.py), the train and evaluate jobs that train.py,
test.py and sweep.py run (jobs.py), and the sweep machinery (sweep/)."""
from trainer.trainer import Trainer

__all__ = ["Trainer"]
