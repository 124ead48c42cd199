"""Which trials are alive: heartbeats in the study's storage, and the retry of a trial whose worker died.

A worker claims the trial it runs (`claim`): the trial's user attribute `claim` = {trial, folder, host}.
A dead worker's trial is found in one of two ways, and then handled one way:
- its heartbeat is older than the grace period (Optuna's RDB heartbeats: `Heartbeat` records one every
  `heartbeat_interval` seconds while the trial runs, and `optuna.storages.fail_stale_trials` fails the stale
  ones); any worker of any machine finds it;
- its sweep folder's run lock is free while it is RUNNING (the kernel dropped the `flock` of the dead
  process); a worker of the same sweep folder finds it at once, also on a journal storage (no heartbeats).
The trial is marked FAIL and `RETRY` (Optuna's RetryHeartbeatStaleTrialCallback) enqueues a WAITING copy with
its parameters and reported epochs, which the next `study.ask()` takes. The copy runs in the original
trial's run folders (`run_prefix`): resumed from their last.pt where the sweep folder holds them, started
anew where it does not."""
from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from trainer.sweep.folder import run_lock

MAX_RETRIES = 3  # retries of one trial at most; a trial whose worker dies once more stays failed

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)


def trial_name(number: int) -> str:
    return f"t{number:04d}"


def original_number(trial: FrozenTrial) -> int:
    """The number of the trial that `trial` retries (through any chain of retries), else its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if original is None else original


def run_prefix(trial: FrozenTrial) -> str:
    """The name its runs' folders start with: the original trial's (t0003-seed=0 for a retry of trial 3)."""
    return trial_name(original_number(trial))


def is_retry(trial: FrozenTrial) -> bool:
    return original_number(trial) != trial.number


def claim(trial: Trial, folder: Path) -> None:
    """Mark `trial` as run by this process in `folder` (once its run lock is held)."""
    trial.set_user_attr("claim", {"trial": trial.number, "folder": str(folder.resolve()),
                                  "host": socket.gethostname()})


def claimed_folder(trial: FrozenTrial) -> str | None:
    """The sweep folder that ran or runs `trial`; None before a worker claims it (a WAITING retry carries
    its original's attributes, not a claim of its own)."""
    owner = trial.user_attrs.get("claim")
    if owner is None and not is_retry(trial):  # a sweep begun before claims recorded only its folder
        return trial.user_attrs.get("sweep_folder")
    return owner["folder"] if owner and owner["trial"] == trial.number else None


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats, None where the storage keeps none (a journal file, or turned off)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


@contextmanager
def asking_with_heartbeats() -> Iterator[None]:
    """Quiet Optuna's warnings that heartbeats are experimental and meant for Study.optimize: here they are
    used with ask and tell on purpose, and a warning per worker and trial would bury the sweep's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def fail_dead_trials(study, storage, folder: Path) -> None:
    """Fail and retry the study's trials whose workers died: stale heartbeats (any machine), and RUNNING
    trials claimed by `folder` whose run lock is free."""
    with asking_with_heartbeats():
        optuna.storages.fail_stale_trials(study)
    here = str(folder.resolve())
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if claimed_folder(frozen) != here:
            continue
        lock = run_lock(folder, run_prefix(frozen))
        if not lock.acquire():
            continue  # its worker is alive
        try:
            failed = storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            failed = False  # it finished (or another worker failed it) since the list was read
        finally:
            lock.release()
        if failed:
            RETRY(study, storage.get_trial(frozen._trial_id))


class Heartbeat:
    """While entered, records `trial`'s heartbeat in `storage` every `heartbeat_interval` seconds, from a
    daemon thread (nothing where the storage keeps no heartbeats). A process killed stops beating."""

    def __init__(self, storage, trial: Trial):
        self.storage, self.trial_id = storage, trial._trial_id
        self.interval = heartbeat_interval(storage)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # a dropped connection: the next beat tries again
                optuna.logging.get_logger(__name__).warning(f"heartbeat not recorded ({err})")

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.interval is not None:
            self.stop.set()
            self.thread.join()

