"""One run of a sweep: train it (or resume it from its last.pt), evaluate it as test.py does, and write
its record, <run>/result.json. The record's presence is what marks the run finished."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from base.base_trainer import EpochCallback
from trainer import jobs
from trainer.components import load_and_check, metric_names
from trainer.sweep.spec import SweepSpec
from utils.checkpoint import load_checkpoint, write_atomic
from utils.errors import UserError

RESULT_FILE = "result.json"
HISTORY_FILE = "epochs.jsonl"



def read_result(run_dir: Path) -> dict | None:
    path = run_dir / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """The epoch logs of a run, {epoch: log}; an epoch trained again after a resume keeps its last line."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return {}
    history = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            history[entry.pop("epoch")] = entry
    return history


def _history_writer(run_dir: Path, then: EpochCallback | None) -> EpochCallback:
    def after_epoch(epoch: int, log: dict[str, float]) -> bool:
        with open(run_dir / HISTORY_FILE, "a") as f:
            f.write(json.dumps({"epoch": epoch, **log}) + "\n")
        return bool(then is not None and then(epoch, log))

    return after_epoch


def metric_value(metric: str, record: dict) -> float:
    """A metric of a finished run's record: its test metrics, then its epoch log at the evaluated epoch."""
    value = record["metrics"].get(metric, record.get("epoch_log", {}).get(metric))
    return math.nan if value is None else float(value)


def execute(folder: Path, run: str, spec: SweepSpec, params: dict[str, Any], seed: int,
            on_epoch: EpochCallback | None = None, hparams: dict[str, Any] | None = None) -> dict:
    """Train, evaluate and record run `run` (a folder of the sweep folder); returns its record.
    `on_epoch(epoch, log) -> prune` watches the epochs (Optuna's pruner); a pruned run is not evaluated.
    A run that fails with a user-level error (a diverged loss, bad data) is recorded as failed."""
    run_dir = folder / run
    last = run_dir / "checkpoints" / "last.pt"
    pruned = []

    def watch(epoch: int, log: dict[str, float]) -> bool:
        if on_epoch is not None and on_epoch(epoch, log):
            pruned.append(epoch)
        return bool(pruned)

    options = jobs.RunOptions(after_epoch=_history_writer(run_dir, watch), hparams=hparams or {},
                              swept=tuple(spec.varied_keys), console=False)
    record: dict[str, Any] = {"run": run, "params": params, "seed": seed, "run_dir": run,
                              "threads": torch.get_num_threads()}
    started = time.perf_counter()
    try:
        if last.is_file():
            checkpoint = load_checkpoint(last)
            config = load_and_check(base=checkpoint["config"])
            jobs.train(config, checkpoint, last, options=options)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # killed before its first checkpoint: start again
            config = spec.run_config(params, seed)
            options.run_dir = run_dir
            jobs.train(config, options=options)
        if pruned:
            record.update(status="pruned", epoch=pruned[0])
        else:
            record.update(status="complete", **_evaluate(run_dir, config, spec.iw_samples))
    except UserError as err:
        record.update(status="failed", error=str(err))
    record["seconds"] = round(time.perf_counter() - started, 1)
    run_dir.mkdir(parents=True, exist_ok=True)  # a run that failed before its folder was made
    text = json.dumps(record, indent=2)
    write_atomic(run_dir / RESULT_FILE, lambda tmp: tmp.write_text(text))
    return record


def _evaluate(run_dir: Path, config: dict, iw_samples: int) -> dict[str, Any]:
    """test.py's evaluation of model_best.pt (last.pt without one): the reported metric values, the
    evaluated epoch, its epoch log, and the run's best monitored value as best_<key>."""
    checkpoints = run_dir / "checkpoints"
    best = checkpoints / "model_best.pt"
    evaluated = best if best.is_file() else checkpoints / "last.pt"
    results = jobs.evaluate(evaluated, iw_samples=iw_samples, progress=False)
    metrics = jobs.metric_values(results, metric_names(config))
    monitor = config["trainer"]["monitor"].split()
    if len(monitor) == 2:
        metrics[f"best_{monitor[1]}"] = float(load_checkpoint(checkpoints / "last.pt")["monitor_best"])
    return {"checkpoint": evaluated.name, "epoch": results["epoch"], "metrics": metrics,
            "epoch_log": read_history(run_dir).get(results["epoch"], {})}
