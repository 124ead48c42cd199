"""Train and evaluate a config over seeds, a grid or an Optuna search, and tabulate the results.

    python sweep.py -c configs/svae_gmm.yaml --seeds 0 1 2 3 4                       # one run per seed
    python sweep.py -c CFG --grid optimizer.args.lr=1e-3,3e-3 --grid arch.args.num_components=10,15 --seeds 0 1
    python sweep.py -c CFG --search SPACE.yaml --trials 40 --objective "max elbo" [--prune] [--workers 2]
    python sweep.py -c CFG --search SPACE.yaml ... --storage postgresql://HOST/DB   # the same command on many machines

Every run trains as train.py does and is evaluated as test.py does. The sweep folder
saved/<name>/sweeps/<MMDD-HHMMSS>/ holds the runs, results.csv and summary.md; starting the
same command again continues it (finished runs are skipped, interrupted ones resume from last.pt).
"""
from __future__ import annotations

from utils.versions import require_minimum_versions

require_minimum_versions()  # before the imports that fail on an older torch

import argparse  # noqa: E402
import ctypes  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from base.base_data_loader import BaseDataLoader  # noqa: E402
from base.base_model import BaseModel  # noqa: E402
from trainer.components import load_and_check, metric_names  # noqa: E402
from trainer.sweep import report, search  # noqa: E402
from trainer.sweep.folder import open_sweep_folder, read_spec  # noqa: E402
from trainer.sweep.grid import work_through_grid  # noqa: E402
from trainer.sweep.spec import Constraint, Objective, SweepSpec, parse_grid, read_space  # noqa: E402
from utils.cli import ArgumentParser, run_main, short_flag_overrides  # noqa: E402
from utils.errors import ConfigError, UserError  # noqa: E402

ANNOUNCED_METRICS = 4  # metrics printed per finished run


def build_spec(args) -> SweepSpec:
    """The sweep the arguments describe, every run's config checked; nothing is created."""
    if args.grid and args.search:
        raise ConfigError("give --grid or --search, not both (search a categorical parameter instead)")
    if not args.search:
        for flag, given in (("--trials", args.trials), ("--prune", args.prune), ("--constraint", args.constraint),
                            ("--storage", args.storage), ("--study-name", args.study_name),
                            ("--heartbeat-interval", args.heartbeat_interval), ("--grace-period", args.grace_period)):
            if given:
                raise ConfigError(f"{flag} needs --search SPACE.yaml")
    elif args.objective is None:
        raise ConfigError('--search needs --objective, e.g. --objective "max elbo"')
    config = load_and_check(args.config, list(args.set) + short_flag_overrides(args), lr=args.lr)
    if args.seeds is not None and (not args.seeds or len(set(args.seeds)) != len(args.seeds)):
        raise ConfigError(f"--seeds must be distinct integers, got {args.seeds}")
    spec = SweepSpec(
        config=config, seeds=args.seeds or [config["seed"]], grid=parse_grid(args.grid),
        space=read_space(args.search) if args.search else [], trials=args.trials or 20,
        objective=Objective.parse(args.objective) if args.objective else None,
        constraints=[Constraint.parse(text) for text in args.constraint], sampler=args.sampler,
        sampler_seed=args.sampler_seed, prune=args.prune, prune_warmup=args.prune_warmup,
        iw_samples=args.iw_samples, study_name=args.study_name)
    if spec.trials < 1 or args.iw_samples < 1 or args.prune_warmup < 0:
        raise ConfigError("--trials and --iw-samples must be >= 1, --prune-warmup >= 0")
    if spec.is_search:
        search.check_sampler(spec.sampler, bool(spec.constraints))
        search.check_heartbeat(args.storage, args.heartbeat_interval, args.grace_period)
    data, model = spec.check()
    logged = logged_keys(data, model, config["seed"])
    _check_objective_metrics(spec, logged)
    if spec.prune:
        spec.prune_metric = _pruned_metric(spec, logged)
    return spec


def _check_objective_metrics(spec: SweepSpec, logged: set[str]) -> None:
    """The objective and constraint metrics are ones the runs produce: a test metric, best_<monitored
    key>, or one of the values `logged` every epoch."""
    config = spec.config
    tested = metric_names(config)
    monitor = config["trainer"]["monitor"].split()
    for metric in [c.metric for c in spec.constraints] + ([spec.objective.metric] if spec.objective else []):
        if not (metric in logged or (len(monitor) == 2 and metric == f"best_{monitor[1]}")
                or any(metric == name or metric.startswith(f"{name}_") for name in tested)):
            raise ConfigError(
                f"the runs do not produce {metric!r}: test metrics {', '.join(tested)}; logged each epoch "
                f"{', '.join(sorted(logged))}")


def _pruned_metric(spec: SweepSpec, logged: set[str]) -> str:
    """The epoch-logged value the pruner watches: the objective's metric, or else the monitored value
    when it is optimised in the objective's direction."""
    monitor = spec.config["trainer"]["monitor"].split()
    if spec.objective.metric in logged:
        return spec.objective.metric
    if len(monitor) == 2 and monitor[0] == spec.objective.mode:
        return monitor[1]
    raise ConfigError(f"--prune watches an epoch-logged value in the objective's direction: "
                      f"{spec.objective.metric!r} is not logged each epoch and trainer.monitor is "
                      f"{spec.config['trainer']['monitor']!r}; set trainer.monitor to '{spec.objective.mode} "
                      f"<logged value>'")


def logged_keys(data: BaseDataLoader, model: BaseModel, seed: int) -> set[str]:
    """What the Trainer logs each epoch for a run of `model` on `data`: the model's outputs on one
    training batch, and the same with val_ when there is a validation split."""
    batch = next(iter(data.train_loader(seed, 0, 1, False)))
    with torch.no_grad():
        keys = {key for key in model(batch) if key != "statistics"}
    return keys | ({f"val_{key}" for key in keys} if data.val_set is not None else set())


def announce(record: dict) -> None:
    """One line per finished run."""
    shown = list(record.get("metrics", {}).items())[:ANNOUNCED_METRICS]
    detail = ", ".join(f"{k} {v:.4g}" for k, v in shown) or record.get("error", "")
    print(f"[sweep] {record['run']}: {record['status']} in {record['seconds']:.0f} s"
          + (f": {detail}" if detail else ""), flush=True)


def work(folder: Path, spec: SweepSpec, study, storage) -> None:
    """One worker: run study trials (a search, its study in `storage`) or grid runs until none is left."""
    if study is not None:
        search.work_on_study(folder, spec, study, storage, announce)
    else:
        work_through_grid(folder, spec, announce)


def _die_with_parent() -> None:
    """Linux: a worker is killed when the sweep process that started it dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_workers(folder: Path, spec: SweepSpec, args, threads: int, study, storage) -> None:
    """`args.workers` worker processes (one in this process, on `study` in `storage`, when 1), each with
    `threads` threads."""
    if args.workers == 1:
        torch.set_num_threads(threads)
        work(folder, spec, study, storage)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder), "--threads", str(threads)]
    for flag, value in (("--storage", args.storage), ("--heartbeat-interval", args.heartbeat_interval),
                        ("--grace-period", args.grace_period)):
        if value is not None:
            command += [flag, str(value)]
    workers = [subprocess.Popen(command + ["--worker-index", str(i), "--study-name", search.study_name(spec)],
                                env=env) for i in range(args.workers)]
    codes = [process.wait() for process in workers]
    if any(codes):
        raise UserError(f"sweep workers exited with status {codes}; see the runs' train.log in {folder}")


def write_report(folder: Path, spec: SweepSpec, study) -> list[dict]:
    """results.csv and summary.md, from the study (a search) or the run folders (a grid). A search's
    results.csv lists the trials this folder ran, its summary every trial of the study (other machines'
    too). Returns results.csv's rows."""
    if study is not None:
        rows, every = report.study_rows(study, spec, folder), report.study_rows(study, spec)
    else:
        rows = every = report.grid_rows(folder, spec)
    report.write_results(folder, rows)
    title = f"Sweep {folder.name} of {spec.config['name']}: `python {' '.join(sys.argv)}`"
    report.write_summary(folder, every, spec, title)
    return rows


def sweep(args) -> int:
    spec = build_spec(args)
    heartbeat = {"heartbeat": args.heartbeat_interval, "grace": args.grace_period}
    storage = search.open_storage(args.storage, None, **heartbeat) if spec.is_search and args.storage else None
    # (before any folder is made: an unreachable storage stops the command here)
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or max(1, cores // args.workers)
    folder, created = open_sweep_folder(spec, fresh=args.fresh)
    runs = f"{spec.trials} trials x {len(spec.seeds)} seeds" if spec.is_search else \
        f"{len(spec.grid_points())} configurations x {len(spec.seeds)} seeds"
    print(f"{'new sweep' if created else 'continuing sweep'} {folder}: {runs}, {args.workers} worker(s) x "
          f"{threads} thread(s)", flush=True)
    study = None
    if spec.is_search:  # create the study once, before workers race to
        storage = storage or search.open_storage(None, folder, **heartbeat)
        study = search.open_study(spec, storage)
    start_workers(folder, spec, args, threads, study, storage)
    rows = write_report(folder, spec, study)
    print((folder / report.SUMMARY_FILE).read_text())
    print(f"wrote {folder / report.RESULTS_FILE} and {folder / report.SUMMARY_FILE}")
    failed = [row["run"] for row in rows if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see results.csv and their train.log)",
              file=sys.stderr)
    return 1 if failed else 0


def parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", help="config file (.json or .yaml)")
    p.add_argument("--seeds", type=int, nargs="+", help="train every configuration once per seed "
                                                        "(default: the config's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every run, as in train.py")
    p.add_argument("--lr", type=float, help="learning rate of every optimizer, as in train.py")
    p.add_argument("--bs", type=int, help="batch size (data_loader.args.batch_size)")
    p.add_argument("--epochs", type=int, help="number of epochs (trainer.epochs)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid dimension (values parsed as --set values); several: their Cartesian product")
    p.add_argument("--search", metavar="SPACE.yaml", help="search space: {key.path: {type: float|log|int|"
                                                           "categorical, low, high, step, log, choices}}")
    p.add_argument("--trials", type=int, help="number of trials in the study (default 20)")
    p.add_argument("--objective", help='"max METRIC" or "min METRIC": a test metric (elbo, iw_nll, ari, ...), '
                                       'best_<monitored key>, or a value logged every epoch (val_elbo)')
    p.add_argument("--constraint", action="append", default=[], metavar="METRIC>=X",
                   help="a trial is feasible when every run meets it (>=, <= or ==); repeatable")
    p.add_argument("--sampler", default="tpe", help=f"Optuna sampler: {', '.join(search.SAMPLERS)} (default tpe)")
    p.add_argument("--sampler-seed", type=int, help="seed of the sampler (local worker i adds i)")
    p.add_argument("--prune", action="store_true", help="median pruner on the objective (or the monitored value) "
                                                        "after every epoch")
    p.add_argument("--prune-warmup", type=int, default=0, help="epochs before a trial may be pruned")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///, postgresql://, mysql://) or journal:PATH; "
                                     "default: study.db in the sweep folder")
    p.add_argument("--study-name", help="join this study (default: derived from the command)")
    p.add_argument("--heartbeat-interval", type=int, metavar="SECONDS",
                   help=f"a running trial's heartbeat in an RDB storage (default {search.HEARTBEAT_INTERVAL})")
    p.add_argument("--grace-period", type=int, metavar="SECONDS",
                   help="a trial without a heartbeat for this long is failed and retried by another worker "
                        "(default twice the interval)")
    p.add_argument("--workers", type=int, default=1, help="runs at once, as separate processes")
    p.add_argument("--threads", type=int, help="torch/OpenMP threads per worker (default: cores / workers)")
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples for iw_nll, as in test.py")
    p.add_argument("--fresh", action="store_true", help="start a new sweep folder even if this command has one")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # the sweep folder, in a process start_workers made
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def run() -> int:
        if args.worker is not None:  # a worker process started by start_workers
            _die_with_parent()
            torch.set_num_threads(args.threads)
            folder = Path(args.worker)
            spec = read_spec(folder)
            spec.study_name = args.study_name
            storage = search.open_storage(args.storage, folder, args.heartbeat_interval,
                                          args.grace_period) if spec.is_search else None
            study = search.open_study(spec, storage, args.worker_index) if spec.is_search else None
            work(folder, spec, study, storage)
            return 0
        if args.config is None:
            raise ConfigError("give a config: python sweep.py -c CONFIG [--seeds ...] [--grid ...] [--search ...]")
        if args.workers < 1 or (args.threads is not None and args.threads < 1):
            raise ConfigError("--workers and --threads must be >= 1")
        return sweep(args)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
