"""Build the model and the data loader from a validated config (train.py, test.py, benchmarks)."""
from __future__ import annotations

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from data_loader import DATA_LOADERS
from model import ARCHITECTURES
from trainer.optim import check_optimizer_config
from utils.config import load_config
from utils.errors import ConfigError


def check_names(config: dict) -> None:
    """Check every class name and argument in the config against the registries."""
    ARCHITECTURES.check(config["arch"], "arch")
    DATA_LOADERS.check(config["data_loader"], "data_loader")
    check_optimizer_config(config)
    if config["metrics"] is not None:
        supported = ARCHITECTURES.get(config["arch"]["type"], "arch.type").metric_names()
        for name in config["metrics"]:
            if name not in supported:
                raise ConfigError(
                    f"config key 'metrics' names {name!r}, which {config['arch']['type']} does not compute; "
                    f"valid: {', '.join(supported)}"
                )


def load_and_check(path=None, overrides=(), base=None, lr: float | None = None) -> dict:
    """`load_config` plus `check_names`: everything about a config is known to be valid."""
    config = load_config(path, overrides, base, lr)
    check_names(config)
    return config


def build_data(config: dict) -> BaseDataLoader:
    return DATA_LOADERS.build(config["data_loader"], "data_loader")


def build_model(config: dict, data: BaseDataLoader) -> BaseModel:
    return ARCHITECTURES.build(config["arch"], "arch", data_shape=tuple(data.data_shape),
                               num_train=len(data.train_set))


def eval_metric_names(config: dict, model: BaseModel) -> tuple[str, ...]:
    """The metrics test.py computes: config `metrics`, or all the model supports."""
    return tuple(config["metrics"]) if config["metrics"] is not None else model.metric_names()
