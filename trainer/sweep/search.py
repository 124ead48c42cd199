"""Hyperparameter search on an Optuna study: a sampler (TPE by default) proposes each trial's config
values, the median pruner may stop a trial after any epoch, and constraints mark trials infeasible.

The study lives in a storage: by default study.db (SQLite) in the sweep folder; `--storage` takes any
Optuna storage URL (sqlite:///, postgresql://, mysql://) or `journal:PATH` (Optuna's journal file
storage, for a shared file system). Every worker of every command pointed at the same study asks it
for the next trial, so trials never run twice. Workers count the study's trials and ask under one lock,
so they never start more than --trials: the sweep folder's file lock, and on PostgreSQL an advisory lock
on the server, which machines that share only the storage see too (`study_lock`). A trial whose worker
died is failed and retried (trainer/sweep/liveness.py): at once by a worker of its sweep folder, after the
heartbeats' grace period by any worker; workers of a study with heartbeats stay until no trial of the
study is left running."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from trainer.sweep.folder import FileLock, run_lock
from trainer.sweep.grid import folder_name
from trainer.sweep.liveness import (RETRY, Heartbeat, asking_with_heartbeats, claim, fail_dead_trials,
                                    heartbeat_interval, is_retry, run_prefix)
from trainer.sweep.run import execute, metric_value, read_result
from trainer.sweep.spec import SweepSpec
from utils.errors import ConfigError

STUDY_FILE = "study.db"
#: sampler name -> (optuna.samplers class name, the extra package it needs)
SAMPLERS = {"tpe": ("TPESampler", None), "random": ("RandomSampler", None), "cmaes": ("CmaEsSampler", "cmaes"),
            "qmc": ("QMCSampler", "scipy"), "gp": ("GPSampler", "scipy")}
CONSTRAINED = ("tpe", "gp")  # the samplers that take constraints
INFEASIBLE = 1e9  # the constraint violation recorded for a pruned or failed trial
HEARTBEAT_INTERVAL = 60  # seconds between a running trial's heartbeats (RDB storages), by default
POLL_SECONDS = 5  # at most this long between a waiting worker's looks at the study


def check_sampler(name: str, constrained: bool) -> None:
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    package = SAMPLERS[name][1]
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"--sampler {name} needs the {package} package: pip install {package}")
    if constrained and name not in CONSTRAINED:
        raise ConfigError(f"--constraint needs a sampler that takes constraints ({', '.join(CONSTRAINED)}), "
                          f"not --sampler {name}")


def check_heartbeat(url: str | None, heartbeat: int | None, grace: int | None) -> None:
    """--heartbeat-interval and --grace-period: whole seconds, the grace longer than the interval, and a
    storage that keeps heartbeats."""
    if (heartbeat or grace) and url is not None and url.startswith("journal:"):
        raise ConfigError(f"--storage {url} keeps no heartbeats: --heartbeat-interval and --grace-period need an "
                          f"RDB storage (sqlite:///, postgresql://, mysql://)")
    interval = HEARTBEAT_INTERVAL if heartbeat is None else heartbeat
    if interval < 1 or grace is not None and grace <= interval:
        raise ConfigError(f"--heartbeat-interval must be >= 1 s and --grace-period longer than it, got {interval} "
                          f"and {grace}: a live trial would be failed between two heartbeats")


def open_storage(url: str | None, folder: Path | None, heartbeat: int | None = None, grace: int | None = None):
    """The study storage: `url` (an RDB URL or journal:PATH), else study.db in `folder`. An RDB storage keeps
    heartbeats every `heartbeat` seconds (default HEARTBEAT_INTERVAL) and fails a trial without one for `grace`
    seconds (default twice that); a journal file keeps none. An unreachable storage is a ConfigError."""
    import optuna

    if url is None:
        url = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            if not path.parent.is_dir():
                raise FileNotFoundError(f"no folder {path.parent}")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url, heartbeat or HEARTBEAT_INTERVAL, grace)
    except ImportError as err:  # SQLAlchemy's default PostgreSQL driver is psycopg (3), an optional install
        if url.startswith("postgresql"):
            raise ConfigError(f"--storage {url}: the PostgreSQL driver is not installed: pip install -r "
                              f"requirements-scale.txt (psycopg[binary])") from None
        raise ConfigError(f"--storage {url}: cannot open the study storage (ImportError: {err}); install the "
                          f"database driver that SQLAlchemy names for this URL") from None
    except Exception as err:  # a refused connection, a bad URL, an unwritable file
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"--storage {url}: cannot open the study storage ({type(err).__name__}: {reason}); "
                          f"give a reachable Optuna storage URL or journal:PATH") from None


def _rdb_storage(url: str, heartbeat: int, grace: int | None, attempts: int = 5):
    """Optuna's RDBStorage on `url`, with heartbeats and RETRY for the trials that go stale. Commands started
    together on an empty database race to create its tables (the loser gets an IntegrityError or a
    duplicate-table error): each retries after a short random pause, and then finds the tables made."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with asking_with_heartbeats():
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                                  heartbeat_interval=heartbeat, grace_period=grace,
                                                  heartbeat_stale_trial_callback=RETRY)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0))


@contextmanager
def study_lock(storage, name: str) -> Iterator[None]:
    """Held while a worker counts the study's trials and asks for one, so that no worker starts one beyond
    --trials. In PostgreSQL: a session advisory lock on the study's name, which every machine sharing the
    server sees; elsewhere nothing here (workers of one sweep folder share its file lock, and SQLite or a
    journal file lives in that folder's file system)."""
    engine = getattr(storage, "engine", None)  # RDBStorage's SQLAlchemy engine
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def study_name(spec: SweepSpec) -> str:
    """--study-name, else one derived from the spec: the same command joins the same study."""
    return spec.study_name or f"{spec.config['name']}-{spec.identity()}"


def open_study(spec: SweepSpec, storage, worker: int = 0):
    """Create or join the sweep's study, with this worker's sampler and the pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_class = getattr(optuna.samplers, SAMPLERS[spec.sampler][0])
    kwargs: dict[str, Any] = {}
    if spec.sampler_seed is not None:
        kwargs["seed"] = spec.sampler_seed + worker  # local workers must not propose the same values
    pruner = (optuna.pruners.MedianPruner(n_warmup_steps=spec.prune_warmup) if spec.prune
              else optuna.pruners.NopPruner())
    name = study_name(spec)
    study = optuna.create_study(storage=storage, study_name=name, direction=spec.objective.direction,
                                sampler=sampler_class(**kwargs), pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != spec.objective.direction:
        raise ConfigError(f"study {name!r} exists with direction {study.direction.name.lower()}, "
                          f"the objective is {spec.objective}; give another --study-name")
    return study


def _next_trial(study, spec: SweepSpec, folder: Path, storage):
    """The next trial to run, asked under the folder's and the storage's locks: a retry of a dead worker's
    trial, else a new one while fewer than `spec.trials` have started (retries not counted). With heartbeats,
    waits while other workers' trials run (one may die and need a retry). None when nothing is left."""
    from optuna.trial import TrialState

    interval = heartbeat_interval(storage)
    while True:
        fail_dead_trials(study, storage, folder)
        with FileLock(folder / ".locks" / "ask"), study_lock(storage, study.study_name):
            trials = study.get_trials(deepcopy=False)
            started = sum(not is_retry(trial) for trial in trials)
            if started < spec.trials or any(trial.state == TrialState.WAITING and is_retry(trial)
                                            for trial in trials):
                with asking_with_heartbeats():
                    trial = study.ask()  # a WAITING retry first
                if interval is not None:
                    storage.record_heartbeat(trial._trial_id)  # from now on, a dead worker is found
                return trial
        if interval is None or not any(trial.state == TrialState.RUNNING for trial in trials):
            return None
        time.sleep(min(interval, POLL_SECONDS))


def work_on_study(folder: Path, spec: SweepSpec, study, storage, announce: Callable[[dict], None]) -> None:
    """Run trials until the study (in `storage`) holds `spec.trials` of them, none waiting to be retried and,
    with heartbeats, none running."""
    from optuna.exceptions import UpdateFinishedTrialError

    while (trial := _next_trial(study, spec, folder, storage)) is not None:
        with Heartbeat(storage, trial):
            prefix = run_prefix(storage.get_trial(trial._trial_id))
            lock = run_lock(folder, prefix)
            lock.acquire(wait=True)  # before the claim: nobody of this folder fails a trial that is starting
            try:
                claim(trial, folder)
                _run_trial(trial, prefix, folder, spec, study, announce)
            except UpdateFinishedTrialError:  # no heartbeat for the grace period (a stalled process)
                print(f"[sweep] trial {trial.number} was failed by another worker after a missed heartbeat and "
                      f"retried; its result here is dropped", flush=True)
            finally:
                lock.release()


def _run_trial(trial, prefix: str, folder: Path, spec: SweepSpec, study, announce: Callable[[dict], None]) -> None:
    """Run the trial's seeds in the run folders named `prefix`-seed=S (a finished one is read back), and tell
    the study."""
    from optuna.trial import TrialState

    params = {param.key: param.suggest(trial) for param in spec.space}
    records = []
    for index, seed in enumerate(spec.seeds):
        name = folder_name(prefix, {}, seed)
        record = read_result(folder / name)
        if record is None:
            watch = _pruning_callback(trial, spec) if spec.prune and index == 0 else None
            record = execute(folder, name, spec, params, seed, on_epoch=watch,
                             hparams={"trial": trial.number})
            announce(record)
        records.append(record)
        if record["status"] != "complete":
            break
    trial.set_user_attr("runs", records)
    statuses = {record["status"] for record in records}
    if "failed" in statuses or "pruned" in statuses:
        for constraint in spec.constraints:
            trial.set_constraint(str(constraint), INFEASIBLE)
        study.tell(trial, state=TrialState.FAIL if "failed" in statuses else TrialState.PRUNED,
                   skip_if_finished=True)
        return
    values = [metric_value(spec.objective.metric, record) for record in records]
    for constraint in spec.constraints:  # feasible when every seed's run meets it
        violation = max(constraint.violation(metric_value(constraint.metric, record)) for record in records)
        trial.set_constraint(str(constraint), min(violation, INFEASIBLE))
    value = sum(values) / len(values)
    if math.isnan(value):
        trial.set_user_attr("error", f"the runs did not report {spec.objective.metric!r}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(trial, value, skip_if_finished=True)


def _pruning_callback(trial, spec: SweepSpec) -> Callable[[int, dict[str, float]], bool]:
    """Report the pruned-on value after each epoch (epochs already reported before a crash are kept) and
    ask the pruner whether to stop."""
    reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)

    def on_epoch(epoch: int, log: dict[str, float]) -> bool:
        value = log.get(spec.prune_metric)
        if value is None or not math.isfinite(value):
            return False
        if epoch not in reported:
            trial.report(value, epoch)
        return trial.should_prune()

    return on_epoch

