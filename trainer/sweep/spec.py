"""What a sweep runs: the base config, seeds, a grid or a search space, the objective and constraints.

Everything here is parsed and checked before anything runs; a bad grid key, search space or objective is
a ConfigError (one line, exit status 2)."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.components import build_data, build_model, load_and_check
from utils.config import parse_value, read_config_file
from utils.errors import ConfigError

DIRECTIONS = {"max": "maximize", "min": "minimize"}
PARAM_KINDS = ("float", "log", "int", "categorical")


@dataclass(frozen=True)
class Objective:
    """`max val_elbo` / `min iw_nll`: a test metric or an epoch-logged value (train `loss`, `val_elbo`)."""

    mode: str
    metric: str

    @classmethod
    def parse(cls, text: str) -> Objective:
        words = text.split()
        if len(words) != 2 or words[0] not in DIRECTIONS:
            raise ConfigError(f"--objective must be 'max METRIC' or 'min METRIC', got {text!r}")
        return cls(*words)

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.mode]

    def __str__(self) -> str:
        return f"{self.mode} {self.metric}"


@dataclass(frozen=True)
class Constraint:
    """`ari>=0.9`, `components_in_use==5`: a metric every run of a feasible trial must satisfy."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        match = re.fullmatch(r"\s*([\w./-]+)\s*(>=|<=|==)\s*(\S+)\s*", text)
        try:
            bound = float(match.group(3)) if match else math.nan
        except ValueError:
            bound = math.nan
        if not match or not math.isfinite(bound):
            raise ConfigError(f"--constraint must look like METRIC>=NUMBER, METRIC<=NUMBER or METRIC==NUMBER, "
                              f"got {text!r}")
        return cls(match.group(1), match.group(2), bound)

    def violation(self, value: float) -> float:
        """<= 0 when `value` satisfies the constraint, else by how much it misses (Optuna's convention)."""
        if not math.isfinite(value):
            return math.inf
        if self.op == ">=":
            return self.bound - value
        if self.op == "<=":
            return value - self.bound
        return abs(value - self.bound)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


@dataclass(frozen=True)
class Param:
    """One search dimension over a config key path. kind: float (uniform), log (log-uniform float),
    int (optional `log`, `step`) or categorical (`choices`)."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    @classmethod
    def from_spec(cls, key: str, spec: Any, source: str) -> Param:
        where = f"{source}: parameter {key!r}"
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_KINDS:
            raise ConfigError(f"{where} must be a mapping with type one of {', '.join(PARAM_KINDS)}")
        kind = spec["type"]
        allowed = {"categorical": {"type", "choices"}, "int": {"type", "low", "high", "step", "log"},
                   "float": {"type", "low", "high", "step"}, "log": {"type", "low", "high"}}[kind]
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} for type {kind}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: categorical needs a non-empty list 'choices'")
            return cls(key, kind, choices=tuple(choices))
        low, high = spec.get("low"), spec.get("high")
        numbers = [v for v in (low, high, spec.get("step")) if v is not None]
        if low is None or high is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in numbers):
            raise ConfigError(f"{where}: type {kind} needs numbers 'low' and 'high'")
        if not low <= high or ((kind == "log" or spec.get("log")) and low <= 0):
            raise ConfigError(f"{where}: needs low <= high{' and low > 0 (log scale)' if kind == 'log' else ''}, "
                              f"got low={low}, high={high}")
        if kind == "int" and not all(float(v).is_integer() for v in numbers):
            raise ConfigError(f"{where}: type int needs integer low, high and step")
        return cls(key, kind, low, high, spec.get("step"), kind == "log" or bool(spec.get("log")))

    def suggest(self, trial) -> Any:
        """This parameter's value in an Optuna trial (its name in the study is the key path)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """Values that every point of the space must accept: the ends, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def override(key: str, value: Any) -> str:
    """`key=value` with the value written so that `parse_value` reads it back (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: `1e-3,[64, 64],'a,b'` -> 3 values."""
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [part.strip() for part in parts]


def parse_grid(entries: list[str]) -> list[tuple[str, list[Any]]]:
    """`--grid key=v1,v2` entries -> [(key, [parsed values])], in the order given."""
    grid = []
    for entry in entries:
        key, sep, text = entry.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {entry!r} must look like key.path=value1,value2,...")
        values = [parse_value(v) for v in split_top_level(text) if v]
        if not values:
            raise ConfigError(f"--grid {key}: the grid is empty; give at least one value, e.g. {key}=1,2")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice; give all its values in one --grid")
        if key == "seed":
            raise ConfigError("--grid seed: give seeds with --seeds")
        grid.append((key, values))
    return grid


def read_space(path: str | Path) -> list[Param]:
    """A SPACE.yaml: {config.key.path: {type: float|log|int|categorical, ...}}."""
    space = read_config_file(path)
    if not space:
        raise ConfigError(f"search space {path} is empty; give at least one parameter")
    params = [Param.from_spec(key, spec, str(path)) for key, spec in space.items()]
    if any(p.key == "seed" for p in params):
        raise ConfigError(f"search space {path}: 'seed' cannot be searched; give seeds with --seeds")
    return params


@dataclass
class SweepSpec:
    """Everything that defines a sweep's runs and results. `identity()` is the same for the same command,
    so that running it again finds (and continues) the same sweep folder and study."""

    config: dict
    seeds: list[int]
    grid: list[tuple[str, list[Any]]] = field(default_factory=list)
    space: list[Param] = field(default_factory=list)
    trials: int = 0
    objective: Objective | None = None
    constraints: list[Constraint] = field(default_factory=list)
    sampler: str = "tpe"
    sampler_seed: int | None = None
    prune: bool = False
    prune_metric: str | None = None  # the epoch-logged value the pruner watches
    prune_warmup: int = 0  # epochs before the pruner may stop a trial
    iw_samples: int = 100
    study_name: str | None = None

    @property
    def is_search(self) -> bool:
        return bool(self.space)

    @property
    def varied_keys(self) -> list[str]:
        """The config key paths the sweep varies: its grid or search space, and seed when it runs several."""
        return [key for key, _ in self.grid] + [param.key for param in self.space] + \
            (["seed"] if len(self.seeds) > 1 else [])

    def to_json(self) -> dict:
        data = asdict(self)
        data["objective"] = str(self.objective) if self.objective else None
        data["constraints"] = [str(c) for c in self.constraints]
        data["space"] = [asdict(p) for p in self.space]
        return data

    @classmethod
    def from_json(cls, data: dict) -> SweepSpec:
        data = dict(data)
        data["grid"] = [(key, values) for key, values in data["grid"]]
        data["space"] = [Param(**{**p, "choices": tuple(p["choices"])}) for p in data["space"]]
        data["objective"] = Objective.parse(data["objective"]) if data["objective"] else None
        data["constraints"] = [Constraint.parse(c) for c in data["constraints"]]
        return cls(**data)

    def identity(self) -> str:
        """A hash of the spec (without the study name, which only says where its trials live)."""
        data = {k: v for k, v in self.to_json().items() if k != "study_name"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def grid_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the grid ({} alone without a grid), the first key varying slowest."""
        keys = [key for key, _ in self.grid]
        return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in self.grid))]

    def run_config(self, params: dict[str, Any], seed: int) -> dict:
        """The config of one run: the base config with `params` (key path -> value) and the seed."""
        overrides = [override(key, value) for key, value in params.items()] + [f"seed={seed}"]
        return load_and_check(base=self.config, overrides=overrides)

    def check(self) -> tuple[Any, Any]:
        """Every run's config is valid and builds its data and model: each grid point, and each search
        parameter at its ends / choices. Returns the first grid point's (the base config's) data and model."""
        data_sets: dict[str, Any] = {}

        def build(params: dict[str, Any]) -> tuple[Any, Any]:
            config = self.run_config(params, self.seeds[0])
            key = json.dumps(config["data_loader"], sort_keys=True)
            data = data_sets[key] = data_sets.get(key) or build_data(config)
            return data, build_model(config, data)

        first, *others = self.grid_points()
        built = build(first)
        for params in others:
            build(params)
        for param in self.space:
            for value in param.corners():
                try:
                    build({param.key: value})
                except ConfigError as err:
                    raise ConfigError(f"search space parameter {param.key!r} = {value!r}: {err}") from None
        return built
