"""One run's entry in TensorBoard's HPARAMS table: its columns (hyperparameters) and values, the metrics the
table shows, and which columns lead.

Columns: the keys a sweep varies, then architecture, data, lr (one per optimizer group: lr/<group>), batch_size,
epochs, seed, then the model's arguments as model.<key>. Metrics: test.py's metrics on the test split's curve
tags, then the best monitored validation value (best/<monitor>).

TensorBoard orders the columns by (not `differs`, name) whatever order they are defined in, and ticks the first
five; `differs` is therefore set on the columns that should lead: a sweep's varied keys, or, in a plain run,
architecture, data and the learning rates, so that a plain run opens on architecture, data, lr, batch_size,
epochs. Metrics keep their defined order. TensorBoard shows every number with five significant digits
("12.000"), so integers are written as text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from utils.config import flatten

#: the columns that lead a plain run (lr: one column per optimizer group)
PLAIN_LEAD = ("architecture", "data", "lr")

HparamValue = bool | float | str


@dataclass(frozen=True)
class HparamsEntry:
    """columns: name -> value, in the order defined; lead: the columns TensorBoard lists (and ticks) first;
    metrics: (run group, tag) pairs in order, the group relative to the run folder ("test" for the test run,
    "" for the run folder itself); domains: every value a text column can take, where that is known (it gives
    the column a filter; a partial list would hide rows)."""

    columns: dict[str, HparamValue]
    lead: tuple[str, ...]
    metrics: tuple[tuple[str, str], ...] = ()
    domains: dict[str, tuple[str, ...]] = field(default_factory=dict)


def column_of(key: str) -> str:
    """The column of a config key path: seed, epochs, batch_size, lr (optimizer.args.lr), lr/<group>
    (optimizer.<group>.args.lr), architecture, data, model.<arg> (arch.args.<arg>); any other key as itself."""
    fixed = {"seed": "seed", "trainer.epochs": "epochs", "data_loader.args.batch_size": "batch_size",
             "optimizer.args.lr": "lr", "arch.type": "architecture", "data_loader.type": "data"}
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    if parts[0] == "optimizer" and parts[2:] == ["args", "lr"]:
        return f"lr/{parts[1]}"
    if parts[:2] == ["arch", "args"] and len(parts) > 2:
        return "model." + ".".join(parts[2:])
    return key


def as_hparam(value: Any) -> HparamValue:
    """A config value as the table shows it: bools and floats as they are, integers and anything else as text."""
    if isinstance(value, (bool, float)):
        return value
    return str(value)


def hparams_entry(config: dict, test_metrics: Iterable[str], unit_tag: Callable[[str], str],
                  swept: Iterable[str] = (), extra: dict[str, Any] | None = None,
                  domains: dict[str, tuple[str, ...]] | None = None) -> HparamsEntry:
    """The entry of a run of `config`. `test_metrics`: what test.py reports; `unit_tag(name)`: the curve tag of
    a metric (logger.tensorboard.curve_tag with the model's unit); `swept`: the config key paths a sweep varies;
    `extra`: further columns by name (e.g. an Optuna trial's number); `domains`: as HparamsEntry's."""
    standard: dict[str, Any] = {"architecture": config["arch"]["type"], "data": config["data_loader"]["type"]}
    optimizers = config["optimizer"]
    for group, spec in ({"": optimizers} if "type" in optimizers else optimizers).items():
        lr = (spec.get("args") or {}).get("lr")
        if lr is not None:
            standard[f"lr/{group}" if group else "lr"] = float(lr)
    standard.update(batch_size=config["data_loader"]["args"].get("batch_size"), epochs=config["trainer"]["epochs"],
                    seed=config["seed"])
    model_args = flatten({"model": config["arch"].get("args") or {}})
    values = flatten(config)
    swept_columns = {column_of(key): values.get(key) for key in swept}
    columns = {**swept_columns, **standard, **(extra or {}), **model_args}
    columns = {name: as_hparam(value) for name, value in columns.items() if value is not None}
    lead = tuple(swept_columns) or tuple(name for name in columns if name.split("/")[0] in PLAIN_LEAD)
    monitor = config["trainer"]["monitor"]
    best = () if monitor == "off" else (("", f"best/{monitor.split()[1]}"),)
    metrics = (*(("test", unit_tag(name)) for name in test_metrics), *best)
    return HparamsEntry(columns, lead, metrics, dict(domains or {}))


def metric_display_name(group: str, tag: str) -> str:
    """A metric's column title: "test elbo_per_point", "best val_loss" (the run group, then the tag's name)."""
    name = tag.split("/", 1)[-1]
    return f"{group or tag.split('/')[0]} {name}"
