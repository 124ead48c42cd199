"""The columns of TensorBoard's HPARAMS table: what every run shows (`hparams_of`) and the config values a
sweep varies (`extra_hparams`)."""
from __future__ import annotations

import re
from typing import Any

from utils.config import flatten


def hparams_of(config: dict) -> dict[str, Any]:
    """The HPARAMS columns every run shares: architecture, data (the loader), learning rate(s), batch size,
    seed, epochs, then the flattened arch.args as model.<key> (lists as text). TensorBoard orders the columns
    by name, those whose values differ first, and shows the first five: architecture, batch_size, data,
    epochs, lr (the arguments' prefix sorts after them); in a sweep, the swept keys, which differ, lead."""
    optimizers = config["optimizer"]
    groups = {"": optimizers} if "type" in optimizers else optimizers
    columns: dict[str, Any] = {"architecture": config["arch"]["type"], "data": config["data_loader"]["type"]}
    for group, spec in groups.items():
        columns[f"lr/{group}" if group else "lr"] = spec["args"].get("lr")
    columns.update(batch_size=config["data_loader"]["args"].get("batch_size"), seed=config["seed"],
                   epochs=config["trainer"]["epochs"])
    for key, value in flatten({"model": config["arch"].get("args") or {}}).items():
        columns[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return {key: value for key, value in columns.items() if value is not None}


SHOWN_BY_HPARAMS = re.compile(r"arch\.args\..+|optimizer\.(\w+\.)?args\.lr|data_loader\.args\.batch_size|"
                              r"trainer\.epochs|seed")


def extra_hparams(values: dict[str, Any]) -> dict[str, Any]:
    """HPARAMS columns for config values by key path (a sweep's parameters), without those `hparams_of`
    already shows under its own names (arch.args.*, learning rates, batch size, epochs, seed)."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in values.items() if not SHOWN_BY_HPARAMS.fullmatch(key)}
