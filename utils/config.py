"""Config loading, overrides and validation.

A config is a plain nested dict (JSON or YAML, one schema). `load_config` reads
a file, fills in defaults, applies `--set a.b.c=value` overrides and validates
everything, so that a bad config fails before any work starts, naming the key
path, what it got and what is allowed.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """A leaf of the schema: allowed types, default, optional allowed values."""

    types: tuple[type, ...]
    default: Any
    choices: tuple[Any, ...] | None = None


def _field(types, default=REQUIRED, choices=None) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), default, choices)


NONE = type(None)
# A dict of Fields is a fixed section; a Field of type dict is free-form and
# checked elsewhere (class arguments against the class signature).
SCHEMA: dict[str, Any] = {
    "name": _field(str, "experiment"),
    "seed": _field(int, 0),
    "n_gpu": _field(int, 1),
    "arch": {"type": _field(str), "args": _field(dict, {})},
    "data_loader": {"type": _field(str), "args": _field(dict, {})},
    "optimizer": _field(dict, {"type": "Adam", "args": {"lr": 1e-3}}),
    "lr_scheduler": _field((dict, NONE), None),
    "metrics": _field((list, NONE), None),
    "trainer": {
        "epochs": _field(int, 10),
        "save_dir": _field(str, "saved/"),
        "save_period": _field(int, 1),
        "keep_last": _field(int, 0),
        "verbosity": _field(int, 1, (0, 1, 2)),
        "monitor": _field(str, "min val_loss"),
        "early_stop": _field(int, 0),
        "min_delta": _field(float, 0.0),
        "tensorboard": _field(bool, True),
        "grad_clip": _field(float, 0.0),
        "amp": _field(str, "off", ("off", "bf16", "fp16")),
        "compile": _field((bool, dict), False),
        "log_every": _field(int, 10),
        "len_epoch": _field((int, NONE), None),
        "nan_policy": _field(str, "stop", ("stop", "skip")),
        "visualize_every": _field(int, 1),
        "histograms": _field(bool, False),
        "log_steps": _field(bool, False),
        "restarts": {  # trainer/restarts.py: short starts from different initial states, the best one continues
            "starts": _field(int, 1),
            "epochs": _field(int, 10),
            "select": _field(str, "max elbo"),
        },
    },
}


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (`3e-4` -> float, `[1, 2]` -> list, `off` -> 'off')."""
    if text.strip().lower() in ("off", "on", "yes", "no"):  # YAML 1.1 would make these bools
        return text.strip()
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse override value {text!r}: {' '.join(str(err).split())}") from None


def read_config_file(path: str | Path, _inheriting: tuple[Path, ...] = ()) -> dict:
    """Read a JSON or YAML config file into a dict. A file with a top-level `base: other.yaml` (a path relative
    to the file) is that config with this file's keys merged over it: mappings key by key, anything else
    (lists included) replaced; bases may have bases of their own."""
    path = Path(path)
    if path.resolve() in _inheriting:
        chain = " -> ".join(str(p) for p in (*_inheriting, path.resolve()))
        raise ConfigError(f"config file {path} is its own base (config key 'base'): {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; give a .yaml or .json config file") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_YamlLoader)
        else:
            raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"invalid {path.suffix[1:].upper()} in {path}: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not (path.parent / base).is_file():
        raise ConfigError(f"config key 'base' in {path} must name a config file relative to it, got {base!r}"
                          + (f" ({path.parent / base} does not exist)" if isinstance(base, str) else ""))
    return merged(read_config_file(path.parent / base, (*_inheriting, path.resolve())), data)


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged over it: mappings key by key, any other value replaced (new dict)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = merged(out[key], value) if both else copy.deepcopy(value)
    return out


def with_defaults(config: dict, schema: dict = SCHEMA, prefix: str = "") -> dict:
    """Return a copy of `config` with every missing schema key set to its default."""
    out = copy.deepcopy(config)
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, dict):
            section = out.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {type(section).__name__}")
            out[key] = with_defaults(section, spec, path + ".")
        elif key not in out:
            if spec.default is REQUIRED:
                raise ConfigError(f"config key '{path}' is required")
            out[key] = copy.deepcopy(spec.default)
    return out


def apply_override(config: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override in place. The key path must exist in the
    schema, or continue inside a free-form mapping such as `arch.args`."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    path, text = assignment.split("=", 1)
    keys = path.strip().split(".")
    node, schema = config, SCHEMA
    for depth, key in enumerate(keys):
        here = ".".join(keys[: depth + 1])
        if isinstance(schema, dict):
            if key not in schema:
                raise ConfigError(_unknown_key_message(here, schema))
            schema = schema[key]
        if depth == len(keys) - 1:
            node[key] = parse_value(text)
        elif not isinstance(node.get(key), dict):
            raise ConfigError(f"cannot set '{path}': config key '{here}' is not a mapping")
        else:
            node = node[key]


def _unknown_key_message(path: str, schema: dict) -> str:
    return f"unknown config key '{path}'; allowed here: {', '.join(sorted(schema))}"


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is NONE else t.__name__ for t in types)


def _check_leaf(path: str, value: Any, spec: Field) -> Any:
    if float in spec.types and type(value) is int:
        value = float(value)
    if isinstance(value, bool) and bool not in spec.types:
        ok = False
    else:
        ok = isinstance(value, spec.types)
    if not ok:
        raise ConfigError(
            f"config key '{path}' must be {_type_names(spec.types)}, got {type(value).__name__} {value!r}"
        )
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"config key '{path}' must be one of {list(spec.choices)}, got {value!r}")
    return value


def validate_schema(config: dict, schema: dict = SCHEMA, prefix: str = "") -> None:
    """Check keys and types against the schema, in place (ints are widened to floats)."""
    for key in config:
        if key not in schema:
            raise ConfigError(_unknown_key_message(prefix + key, schema))
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, dict):
            validate_schema(config[key], spec, path + ".")
        else:
            config[key] = _check_leaf(path, config[key], spec)
    if not prefix:
        _check_ranges(config)


def _check_ranges(config: dict) -> None:
    trainer = config["trainer"]
    for key in ("epochs", "save_period", "log_every"):
        if trainer[key] < 1:
            raise ConfigError(f"config key 'trainer.{key}' must be >= 1, got {trainer[key]}")
    for key in ("keep_last", "early_stop", "min_delta", "grad_clip", "visualize_every"):
        if trainer[key] < 0:
            raise ConfigError(f"config key 'trainer.{key}' must be >= 0, got {trainer[key]}")
    if trainer["len_epoch"] is not None and trainer["len_epoch"] < 1:
        raise ConfigError(f"config key 'trainer.len_epoch' must be >= 1 or null, got {trainer['len_epoch']}")
    _check_compile(trainer["compile"])
    monitor = trainer["monitor"].split()
    if monitor != ["off"] and (len(monitor) != 2 or monitor[0] not in ("min", "max")):
        raise ConfigError(
            f"config key 'trainer.monitor' must be 'off' or 'min <metric>' / 'max <metric>', "
            f"got {trainer['monitor']!r}"
        )
    _check_restarts(trainer)
    if config["n_gpu"] < 0:
        raise ConfigError(f"config key 'n_gpu' must be >= 0, got {config['n_gpu']}")


def _check_restarts(trainer: dict) -> None:
    restarts = trainer["restarts"]
    if restarts["starts"] < 1:
        raise ConfigError(f"config key 'trainer.restarts.starts' must be >= 1 (1: no restarts), "
                          f"got {restarts['starts']}")
    if restarts["starts"] > 1 and not 1 <= restarts["epochs"] <= trainer["epochs"]:
        raise ConfigError(f"config key 'trainer.restarts.epochs' must be between 1 and trainer.epochs "
                          f"({trainer['epochs']}), got {restarts['epochs']}")
    select = restarts["select"].split()
    if len(select) != 2 or select[0] not in ("min", "max"):
        raise ConfigError(f"config key 'trainer.restarts.select' must be 'min <metric>' or 'max <metric>' (a "
                          f"model output such as elbo), got {restarts['select']!r}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_OPTIONS = {"mode": (str,), "dynamic": (bool, NONE), "backend": (str,), "fullgraph": (bool,)}


def _check_compile(spec: bool | dict) -> None:
    """`trainer.compile`: false, true, or the torch.compile options {mode, dynamic, backend, fullgraph}."""
    if isinstance(spec, bool):
        return
    for key, value in spec.items():
        if key not in COMPILE_OPTIONS:
            raise ConfigError(f"unknown key 'trainer.compile.{key}'; allowed: {', '.join(COMPILE_OPTIONS)}")
        if not isinstance(value, COMPILE_OPTIONS[key]):
            names = " or ".join("null" if t is NONE else t.__name__ for t in COMPILE_OPTIONS[key])
            raise ConfigError(f"config key 'trainer.compile.{key}' must be {names}, got {value!r}")
    if spec.get("mode", "default") not in COMPILE_MODES:
        raise ConfigError(f"config key 'trainer.compile.mode' must be one of {', '.join(COMPILE_MODES)}, "
                          f"got {spec['mode']!r}")


def optimizer_groups(config: dict) -> dict[str, dict]:
    """Normalise `optimizer` to {group name: {type, args, lr_scheduler}}.

    One spec ({type, args}) covers all parameters as the group 'all' and takes the
    top-level `lr_scheduler`; a mapping names the model's parameter groups, each
    with its own spec and optional `lr_scheduler`.
    """
    spec = config["optimizer"]
    if "type" in spec:
        _check_spec(spec, "optimizer")  # its scheduler is the top-level `lr_scheduler`
        groups = {"all": {**spec, "lr_scheduler": config["lr_scheduler"]}}
        prefixes = {"all": "optimizer"}
    else:
        if config["lr_scheduler"] is not None:
            raise ConfigError(
                "config key 'lr_scheduler' applies to a single optimizer spec; with one optimizer "
                "per parameter group put 'lr_scheduler' inside each group of 'optimizer'"
            )
        if not spec:
            raise ConfigError("config key 'optimizer' is empty: give {type, args} or one spec per parameter group")
        groups = spec
        prefixes = {name: f"optimizer.{name}" for name in spec}
    out = {}
    for name, group in groups.items():
        path = prefixes[name]
        _check_spec(group, path, allowed=("type", "args", "lr_scheduler"))
        scheduler = group.get("lr_scheduler")
        if scheduler is not None:
            _check_spec(scheduler, f"{path}.lr_scheduler" if name != "all" else "lr_scheduler")
        out[name] = {"type": group["type"], "args": group.get("args") or {}, "lr_scheduler": scheduler}
    return out


def _check_spec(spec: Any, path: str, allowed: tuple[str, ...] = ("type", "args")) -> None:
    """A `{type, args}` mapping (plus the `allowed` extra keys)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigError(f"config key '{path}' must be a mapping with a string 'type' and optional 'args'")
    for key in spec:
        if key not in allowed:
            raise ConfigError(_unknown_key_message(f"{path}.{key}", dict.fromkeys(allowed)))
    if not isinstance(spec.get("args") or {}, dict):
        raise ConfigError(f"config key '{path}.args' must be a mapping")


def set_learning_rate(config: dict, lr: float) -> None:
    """`--lr`: set `args.lr` of the single optimizer spec, or of every parameter group's spec."""
    spec = config["optimizer"]
    for group in [spec] if "type" in spec else spec.values():
        if isinstance(group, dict):  # anything else is reported by `optimizer_groups`
            group["args"] = {**(group.get("args") or {}), "lr": lr}


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None,
                lr: float | None = None) -> dict:
    """Read `path` (or start from `base`, e.g. a checkpoint's config), fill defaults,
    apply overrides, then `lr` (every optimizer's learning rate), and validate the schema.
    Names of classes are checked by `check_names` once the registries are importable."""
    raw = read_config_file(path) if path is not None else copy.deepcopy(base)
    config = with_defaults(raw)
    for assignment in overrides:
        apply_override(config, assignment)
    validate_schema(config)
    if lr is not None:
        set_learning_rate(config, lr)
    optimizer_groups(config)
    return config


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings (for TensorBoard hparams)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
