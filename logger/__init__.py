"""Console/file logging and the TensorBoard writer."""
from logger.logger import setup_logging
from logger.tensorboard import TensorboardWriter

__all__ = ["setup_logging", "TensorboardWriter"]
