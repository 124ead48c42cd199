"""results.csv (one row per run) and summary.md (per configuration: mean, standard deviation, min-max and
count of each metric over its runs)."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from trainer.sweep.grid import grid_runs
from trainer.sweep.liveness import claimed_folder, is_retry, original_number, run_prefix
from trainer.sweep.run import metric_value, read_result
from trainer.sweep.spec import SweepSpec
from utils.checkpoint import write_atomic

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"


def grid_rows(folder: Path, spec: SweepSpec) -> list[dict[str, Any]]:
    """Every run of the grid, finished or not, in grid order."""
    rows = []
    for run in grid_runs(spec):
        record = read_result(folder / run.name) or {"run": run.name, "params": run.params, "seed": run.seed,
                                                     "run_dir": run.name, "status": "not run"}
        rows.append(_row(record, spec))
    return rows


def study_rows(study, spec: SweepSpec, folder: Path | None = None) -> list[dict[str, Any]]:
    """Every run of every trial of the study, or with `folder` of the trials that sweep folder ran (a trial not
    finished yet, or failed with its worker, is one row with its state). A retry of a dead worker's trial
    names that trial in `retry_of`."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if folder is not None and claimed_folder(trial) != str(folder.resolve()):
            continue
        records = trial.user_attrs.get("runs") or [{"run": run_prefix(trial), "params": trial.params,
                                                    "seed": "", "run_dir": "", "status": trial.state.name.lower()}]
        for record in records:
            row = {"trial": trial.number, **_row(record, spec)}
            row["trial_state"] = trial.state.name.lower()
            row["retry_of"] = original_number(trial) if is_retry(trial) else ""
            complete = trial.state.name == "COMPLETE"  # a pruned trial's value is its last intermediate one
            row["trial_value"] = trial.value if complete else ""
            row["feasible"] = _feasible(trial)
            rows.append(row)
    return rows


def _feasible(trial) -> Any:
    return all(v <= 0 for v in trial.constraints.values()) if trial.constraints else ""


def _row(record: dict, spec: SweepSpec) -> dict[str, Any]:
    keys = [key for key, _ in spec.grid] + [param.key for param in spec.space]
    row = {"run": record["run"], "status": record["status"]}
    row.update({key: _cell(record["params"].get(key, "")) for key in keys})
    row.update(seed=record["seed"], run_dir=record["run_dir"], checkpoint=record.get("checkpoint", ""),
               epoch=record.get("epoch", ""))
    row.update(record.get("metrics", {}))
    if spec.objective is not None and record["status"] == "complete" and spec.objective.metric not in row:
        row[spec.objective.metric] = metric_value(spec.objective.metric, record)  # an epoch-logged objective
    if record.get("error"):
        row["error"] = record["error"]
    return row


def _cell(value: Any) -> Any:
    """A config value as a csv cell and summary key: lists and mappings as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_results(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """results.csv: the union of the rows' columns, in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = folder / RESULTS_FILE
    write_atomic(path, lambda tmp: tmp.write_text(out.getvalue()))
    return path


BOOKKEEPING = {"run", "status", "seed", "run_dir", "checkpoint", "epoch", "trial", "trial_state",
               "trial_value", "feasible", "error", "retry_of"}


def summarize(rows: list[dict[str, Any]], spec: SweepSpec) -> str:
    """A markdown table: one row per configuration (the swept values), its number of finished runs and,
    per metric, mean ± standard deviation (min - max) over those runs."""
    keys = [key for key, _ in spec.grid] + [param.key for param in spec.space]
    if spec.is_search:
        keys = ["trial", *keys]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key, "") for key in keys), []).append(row)
    metrics = list(dict.fromkeys(key for row in rows for key in row
                                 if key not in BOOKKEEPING and key not in keys and row["status"] == "complete"))
    order = list(groups)
    if spec.is_search:
        order.sort(key=lambda config: _rank(groups[config], spec))
    constrained = spec.is_search and bool(spec.constraints)
    header = [*(k.rsplit(".", 1)[-1] for k in keys), "runs", *(["feasible"] if constrained else []), *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in order:
        finished = [row for row in groups[config] if row["status"] == "complete"]
        others = [row["status"] for row in groups[config] if row["status"] != "complete"]
        count = f"{len(finished)}" + (f" (+{len(others)} {', '.join(sorted(set(others)))})" if others else "")
        cells = [_format(value) for value in config] + [count]
        if constrained:
            cells.append({True: "yes", False: "no"}.get(groups[config][0].get("feasible"), ""))
        cells += [_describe([row.get(metric) for row in finished]) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rank(rows: list[dict[str, Any]], spec: SweepSpec) -> tuple:
    """Search configurations: feasible finished trials first, best objective first."""
    value = rows[0].get("trial_value")
    if value in ("", None):
        return (2, 0.0)
    sign = -1.0 if spec.objective.mode == "max" else 1.0
    return (0 if rows[0].get("feasible") in (True, "") else 1, sign * float(value))


def _describe(values: list[Any]) -> str:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numbers = [v for v in numbers if math.isfinite(v)]
    if not numbers:
        return ""
    mean = statistics.fmean(numbers)
    if len(numbers) == 1:
        return _format(mean)
    sd = statistics.stdev(numbers)
    return f"{_format(mean)} ± {_format(sd)} ({_format(min(numbers))} – {_format(max(numbers))})"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def write_summary(folder: Path, rows: list[dict[str, Any]], spec: SweepSpec, title: str) -> Path:
    text = f"# {title}\n\n{summarize(rows, spec)}"
    path = folder / SUMMARY_FILE
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path
