"""The data loaders and the model of a validated config, and the metrics its runs report (trainer.jobs,
the sweep, benchmarks)."""
from __future__ import annotations

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from data_loader import DATA_LOADERS
from model import ARCHITECTURES
from trainer.optim import check_optimizer_config
from utils.config import load_config
from utils.errors import ConfigError


def describe_run(config: dict, data: BaseDataLoader, model: BaseModel) -> str:
    """What `train.py --dry-run` prints: the data summary, the model's size and the metrics test.py reports."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f"data: {config['data_loader']['type']}", *(f"  {line}" for line in data.describe()),
             f"  example shape: {tuple(data.data_shape)}",
             f"model: {config['arch']['type']}, {n_params:,} trainable parameters",
             f"metrics: {', '.join(eval_metric_names(config, model, data)) or '(none)'}"]
    return "\n".join(lines)


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
                               num_train=len(data.train_set), frames_per_example=data.frames_per_example,
                               label_names=data.label_names, channel_names=data.channel_names,
                               sequence_names=data.sequence_names, frame_rate=data.frame_rate)


def metric_names(config: dict) -> tuple[str, ...]:
    """The test metrics a config asks for: its `metrics`, or (when it names none) every metric of its
    architecture. The one fallback that evaluation, the sweep's objective check and its records share."""
    if config["metrics"] is not None:
        return tuple(config["metrics"])
    return ARCHITECTURES.get(config["arch"]["type"], "arch.type").metric_names()


def eval_metric_names(config: dict, model: BaseModel, data: BaseDataLoader) -> tuple[str, ...]:
    """The metrics test.py computes: `metric_names(config)`, without (when the config names none) those the
    model cannot compute on the data (`BaseModel.metric_problem`: e.g. a field the data's batches lack).
    Raises ConfigError for a listed metric that cannot be computed."""
    fields = data.fields
    if config["metrics"] is None:
        return tuple(name for name in metric_names(config) if model.metric_problem(name, fields) is None)
    for name in config["metrics"]:
        problem = model.metric_problem(name, fields)
        if problem is not None:
            raise ConfigError(f"config key 'metrics' names {name!r}, which {config['arch']['type']} cannot compute "
                              f"here: {problem}. Drop it from 'metrics' (or leave 'metrics' out to compute what "
                              f"the data allows)")
    return tuple(config["metrics"])
