"""Optimizers and LR schedulers from config, one per named parameter group."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from utils.config import optimizer_groups
from utils.errors import ConfigError
from utils.registry import Registry

OPTIMIZERS = Registry("optimizer", injected=("params",))
OPTIMIZERS.add_classes({
    name: cls for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, Optimizer) and cls is not Optimizer
})

# Schedulers that need Python callables or other schedulers cannot come from a config.
_NOT_CONFIGURABLE = {"LRScheduler", "LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"}
SCHEDULERS = Registry("lr scheduler", injected=("optimizer",))
SCHEDULERS.add_classes({
    name: cls for name, cls in vars(lr_scheduler).items()
    if isinstance(cls, type) and issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))
    and name not in _NOT_CONFIGURABLE and not name.startswith("_")
})


def check_optimizer_config(config: dict) -> None:
    """Validate optimizer and scheduler names and arguments of every group."""
    for name, group in optimizer_groups(config).items():
        path = "optimizer" if name == "all" else f"optimizer.{name}"
        OPTIMIZERS.check(group, path)
        if group["lr_scheduler"] is not None:
            SCHEDULERS.check(group["lr_scheduler"], "lr_scheduler" if name == "all" else f"{path}.lr_scheduler")


def build_optimizers(model: nn.Module, config: dict) -> tuple[dict[str, Optimizer], dict[str, object]]:
    """One optimizer (and optional scheduler) per group: {'all': ...} for a single spec,
    else the model's `parameter_groups()` named in the config mapping."""
    groups = optimizer_groups(config)
    if list(groups) == ["all"]:
        params = {"all": [p for p in model.parameters() if p.requires_grad]}
    else:
        params = model.parameter_groups()
        unknown = sorted(set(groups) - set(params))
        missing = sorted(set(params) - set(groups))
        if unknown or missing:
            raise ConfigError(
                f"config key 'optimizer' names parameter groups {sorted(groups)}, but the model "
                f"{config['arch']['type']!r} has groups {sorted(params)}"
                + (f" (unknown: {unknown})" if unknown else "") + (f" (missing: {missing})" if missing else "")
            )
    optimizers, schedulers = {}, {}
    for name, group in groups.items():
        path = "optimizer" if name == "all" else f"optimizer.{name}"
        optimizers[name] = OPTIMIZERS.build(group, path, params[name])
        if group["lr_scheduler"] is not None:
            spath = "lr_scheduler" if name == "all" else f"{path}.lr_scheduler"
            schedulers[name] = SCHEDULERS.build(group["lr_scheduler"], spath, optimizers[name])
    return optimizers, schedulers


# torch's private protocol between GradScaler and its fused optimizers (Adam, AdamW, SGD, Adagrad): an
# optimizer whose `_step_supports_amp_scaling` is True reads a `found_inf` attribute (a float tensor) in
# `step()` and changes nothing where it is 1. Used here alone, so that a torch that changes it fails clearly.
AMP_SCALING_FLAG = "_step_supports_amp_scaling"


def skips_step_on_found_inf(optimizer: Optimizer) -> bool:
    """Whether `step_with_found_inf` can skip `optimizer`'s step on the device. Raises RuntimeError naming the
    torch version and the attribute when a fused optimizer lacks the private flag (torch changed the protocol)."""
    if optimizer.defaults.get("fused") and not hasattr(optimizer, AMP_SCALING_FLAG):
        raise RuntimeError(
            f"torch {torch.__version__}: the fused optimizer {type(optimizer).__name__} has no attribute "
            f"{AMP_SCALING_FLAG!r}, the private flag through which the Trainer skips a step with a non-finite "
            f"loss on the device (optimizer.found_inf); this torch changed that private API: set 'fused: false' "
            f"in the optimizer's args, or use a torch version this code was tested with"
        )
    return bool(getattr(optimizer, AMP_SCALING_FLAG, False))


def step_with_found_inf(optimizer: Optimizer, found_inf: torch.Tensor) -> None:
    """`optimizer.step()` that changes nothing where `found_inf` (0-d float, on the device) is 1; only for an
    optimizer that `skips_step_on_found_inf`."""
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
