"""BaseTrainer: the epoch loop, the monitored metric, early stopping, checkpoints and resume.

Subclasses implement `_run_epoch(epoch) -> log` (train + validate) and
`_log_epoch(...)`. Everything needed to continue a run is in `state_dict()`:
model, schedule state, optimizers, schedulers, grad scaler, epoch, global step,
best monitored value, early-stop counter and the RNG states of every rank.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.amp import GradScaler

from base.base_model import BaseModel
from logger.hparams import HparamsEntry
from logger.tensorboard import TensorboardWriter
from utils.checkpoint import FORMAT_VERSION, copy_atomic, load_model_weights, save_atomic
from utils.distributed import DistInfo, gather_objects
from utils.errors import CheckpointError, ConfigError, OutputWriteError
from utils.seeding import rng_state, set_rng_state


#: after_epoch(epoch, log) -> stop: called after each epoch, before its checkpoints are written (a sweep's
#: record and pruner); True ends training once that epoch's checkpoints are written
EpochCallback = Callable[[int, dict[str, float]], bool]


@dataclass
class TrainerContext:
    """Where a trainer runs and what it writes to, besides what it trains and the config.

    device: where the model and the batches go; device_ids: the GPUs of DataParallel ([]: none).
    dist: this process among the DDP ranks; logger: the run's logger.
    run_dir: the run folder (checkpoints/, figures/); None: nothing written.
    writer: the run's TensorBoard writers; None: TensorBoard off.
    hparams: the run's entry in TensorBoard's HPARAMS table; None: none.
    console: progress bars allowed (then shown on a terminal, on rank 0, with trainer.verbosity > 0).
    """

    device: torch.device
    logger: logging.Logger
    run_dir: Path | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    device_ids: list[int] = field(default_factory=list)
    writer: TensorboardWriter | None = None
    hparams: HparamsEntry | None = None
    console: bool = True


class BaseTrainer:
    def __init__(self, model: BaseModel, optimizers: dict, schedulers: dict, config: dict, context: TrainerContext,
                 after_epoch: EpochCallback | None = None, scaler: GradScaler | None = None):
        self.model_core = model
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.scaler = scaler
        self.config = config
        self.dist = context.dist
        self.logger = context.logger
        self.run_dir = run_dir = context.run_dir
        self.after_epoch = after_epoch
        self.checkpoint_dir = run_dir / "checkpoints" if run_dir is not None else None

        cfg = config["trainer"]
        self.epochs = cfg["epochs"]
        self.save_period = cfg["save_period"]
        self.keep_last = cfg["keep_last"]
        self.early_stop = cfg["early_stop"]
        self.min_delta = cfg["min_delta"]
        if cfg["monitor"] == "off":
            self.monitor_mode, self.monitor_key = "off", None
        else:
            self.monitor_mode, self.monitor_key = cfg["monitor"].split()
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        self.start_epoch = 1
        self.global_step = 0
        self.saved_epoch: int | None = None  # epoch of the last.pt this process wrote

    # ----------------------------------------------------------------- loop
    def fit(self) -> dict[str, float]:
        """Train from `start_epoch` to `epochs`; returns the last epoch's log."""
        if self.start_epoch > self.epochs:
            self.logger.info("nothing to train: the checkpoint is at epoch %d of %d; extend the run with "
                             "--set trainer.epochs=N", self.start_epoch - 1, self.epochs)
            return {}
        log: dict[str, float] = {}
        epoch = self.start_epoch
        try:
            self._on_fit_start()
            log = self._before_epochs()
            epoch = self.start_epoch - 1 if log else epoch
            for epoch in range(self.start_epoch, self.epochs + 1):
                started = time.perf_counter()
                log = self._run_epoch(epoch)
                improved = self._update_monitor(log)
                self._log_epoch(epoch, log, time.perf_counter() - started, improved)
                stop = self.after_epoch is not None and self.after_epoch(epoch, log)
                self._save_checkpoints(epoch, improved)
                if stop:
                    self.logger.info("stopped after epoch %d by the program running this run (e.g. a pruned "
                                     "sweep trial)", epoch)
                    break
                if self.early_stop and self.not_improved_count >= self.early_stop:
                    self.logger.info("early stopping: %s has not improved by more than %g for %d epochs",
                                     self.monitor_key, self.min_delta, self.not_improved_count)
                    break
            self._on_fit_end(log, epoch)
        except OutputWriteError as err:  # a full disk: say where training stopped and what is safe
            raise OutputWriteError(err.path, f"{err.reason}; training stopped in epoch {epoch} and "
                                             f"{self.last_good_checkpoint()}") from None
        return log

    def _run_epoch(self, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def _log_epoch(self, epoch: int, log: dict[str, float], seconds: float, improved: bool) -> None:
        raise NotImplementedError

    def _on_fit_start(self) -> None:
        """Called once before the first epoch of this process."""

    def _before_epochs(self) -> dict[str, float]:
        """Epochs trained before the main loop (the Trainer's restarts); returns the last one's log ({}: none).
        It leaves `start_epoch` at the epoch the main loop begins with."""
        return {}

    def _on_fit_end(self, log: dict[str, float], epoch: int) -> None:
        """Called once after the last epoch (`epoch`, the last one trained)."""

    # -------------------------------------------------------------- monitor
    def _update_monitor(self, log: dict[str, float]) -> bool:
        """Whether the monitored value improved by more than min_delta (ties do not count)."""
        if self.monitor_mode == "off":
            return False
        if self.monitor_key not in log:
            raise ConfigError(
                f"config key 'trainer.monitor' names {self.monitor_key!r}, which is not logged; "
                f"available: {', '.join(sorted(log))} (val_* needs a validation set: data_loader.args.validation_split "
                f"> 0, or the generated sets' val_points_per_class / num_val_sequences)"
            )
        value = log[self.monitor_key]
        if self.monitor_mode == "min":
            improved = value < self.monitor_best - self.min_delta
        else:
            improved = value > self.monitor_best + self.min_delta
        if improved:
            self.monitor_best = value
            self.not_improved_count = 0
        else:
            self.not_improved_count += 1
        return improved

    # ---------------------------------------------------------- checkpoints
    def state_dict(self, epoch: int) -> dict:
        """The full training state (plain types; loadable with weights_only=True)."""
        return {
            "format_version": FORMAT_VERSION,
            "arch": self.config["arch"]["type"],
            "config": self.config,
            "epoch": epoch,
            "global_step": self.global_step,
            "model": self.model_core.state_dict(),
            "schedule": self.model_core.schedule_state(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "monitor_best": float(self.monitor_best),
            "not_improved_count": self.not_improved_count,
            "rng": gather_objects(rng_state()),
        }

    def _save_checkpoints(self, epoch: int, improved: bool, periodic: bool = True) -> None:
        """last.pt; checkpoint-epoch<N>.pt every save_period epochs (unless not `periodic`: a restart's epochs,
        whose numbers repeat); model_best.pt when the monitored value `improved`."""
        state = self.state_dict(epoch)  # every rank takes part (RNG states are gathered)
        if not self.dist.is_main or self.checkpoint_dir is None:
            return
        last = self.checkpoint_dir / "last.pt"
        save_atomic(state, last)
        self.saved_epoch = epoch
        if periodic and epoch % self.save_period == 0:
            copy_atomic(last, self.checkpoint_dir / f"checkpoint-epoch{epoch}.pt")
            self._prune_epoch_checkpoints()
        if improved:
            copy_atomic(last, self.checkpoint_dir / "model_best.pt")
            self.logger.debug("saved model_best.pt (%s %.6g)", self.monitor_key, self.monitor_best)

    def last_good_checkpoint(self) -> str:
        """Where the run can be resumed from, for error messages."""
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None
        if last is None or not last.exists():
            return "no checkpoint had been written yet"
        epoch = f" (epoch {self.saved_epoch})" if self.saved_epoch is not None else ""
        return f"the last good checkpoint is {last}{epoch}: resume with python train.py -r {last}"

    def _prune_epoch_checkpoints(self) -> None:
        if not self.keep_last:
            return
        found = []
        for path in self.checkpoint_dir.glob("checkpoint-epoch*.pt"):
            match = re.fullmatch(r"checkpoint-epoch(\d+)\.pt", path.name)
            if match:
                found.append((int(match.group(1)), path))
        for _, path in sorted(found)[: -self.keep_last]:
            path.unlink(missing_ok=True)

    def load_state_dict(self, state: dict) -> None:
        """Restore a full training state saved by `state_dict` (call after everything is built)."""
        load_model_weights(self.model_core, state)
        if set(state["optimizers"]) != set(self.optimizers):
            raise CheckpointError(
                f"checkpoint has optimizers for groups {sorted(state['optimizers'])}, the config has "
                f"{sorted(self.optimizers)}; fine-tune with -r CKPT -c CONFIG instead"
            )
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(state["optimizers"][name])
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"checkpoint optimizer {name!r} does not fit: {err}") from None
        for name, sched in self.schedulers.items():
            if name in state["schedulers"]:
                sched.load_state_dict(state["schedulers"][name])
            else:
                self.logger.warning("checkpoint has no state for lr scheduler %r: it starts fresh", name)
        if self.scaler is not None and state["grad_scaler"]:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = state["epoch"] + 1
        self.global_step = state["global_step"]
        self.monitor_best = state["monitor_best"]
        self.not_improved_count = state["not_improved_count"]
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            self.logger.warning("checkpoint was written by %d process(es), this run has %d: RNG streams "
                                "continue from rank 0's state", len(rng), self.dist.world_size)
        set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])

