"""Seeds x grid points: a fixed list of runs that any number of workers (processes, commands, machines
sharing the folder) work through, each run claimed by a lock, finished runs skipped, interrupted ones
resumed from their last.pt."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainer.sweep.folder import run_lock
from trainer.sweep.run import execute, read_result
from trainer.sweep.spec import SweepSpec


@dataclass(frozen=True)
class GridRun:
    name: str  # its folder in the sweep folder: <index>-<key>=<value>-...-seed=<seed>
    params: dict[str, Any]
    seed: int


def folder_name(prefix: str, params: dict[str, Any], seed: int) -> str:
    """A short, file-system-safe run name: prefix, then leaf=value for each parameter and the seed."""
    labels = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in params.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join([prefix, *labels]))


def grid_runs(spec: SweepSpec) -> list[GridRun]:
    """Every (grid point, seed) pair, the seeds of a point together."""
    pairs = [(params, seed) for params in spec.grid_points() for seed in spec.seeds]
    return [GridRun(folder_name(f"{i:03d}", params, seed), params, seed) for i, (params, seed) in enumerate(pairs)]


def work_through_grid(folder: Path, spec: SweepSpec, announce: Callable[[dict], None]) -> None:
    """Run every unfinished, unclaimed run of the grid in order; `announce(record)` after each."""
    for run in grid_runs(spec):
        if read_result(folder / run.name) is not None:
            continue
        lock = run_lock(folder, run.name)
        if not lock.acquire():  # another worker runs it
            continue
        try:
            if read_result(folder / run.name) is None:  # that worker may have just finished it
                announce(execute(folder, run.name, spec, run.params, run.seed))
        finally:
            lock.release()
