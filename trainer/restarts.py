"""Restarts chosen without labels (`trainer.restarts`): several short starts from different initial states,
and the one with the best score continues, as scikit-learn's `n_init` does for mixtures.

Start 0 is the run as built, so `starts: 1` is a plain run. Start i >= 1 rebuilds the model under the seed
`start_seed(seed, i)` (the same on every rank) and puts the optimizers, lr schedulers and grad scaler back in
their state before the first step. Every start trains `restarts.epochs` epochs, numbered from 1 as a run's
are (schedules such as the KL warm-up and SVAE-SLDS's staged start run inside each start). Its score is the
mean of the model output that `restarts.select` names (e.g. `max elbo`), computed in eval mode after its last
epoch over the validation split, or over the training split without its label fields when there is no
validation split: labels never choose. The chosen start then goes on to `trainer.epochs` as if it had been
the only one.

Each start's epochs are logged to the run log; TensorBoard gets the chosen start's curves (written once it is
chosen) and `restarts/<select metric>` by start. Every checkpoint written during the starts holds the progress
(`StartProgress`: the start being trained, the finished starts' scores and epoch logs, the best finished
start's whole training state), so a killed run resumes inside the start it was in and chooses as an
uninterrupted run would.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from base.base_data_loader import BaseDataLoader
from base.base_model import LABEL_FIELDS, BaseModel
from base.base_trainer import BaseTrainer
from trainer.components import build_model
from utils.errors import ConfigError
from utils.seeding import seed_everything

#: start i's seed is seed + i * START_SEED_STRIDE: no start of one seed repeats a start of a nearby seed
START_SEED_STRIDE = 100_003


def start_seed(seed: int, start: int) -> int:
    """The seed that start `start` (0-based) of a run with seed `seed` builds its model under."""
    return seed + START_SEED_STRIDE * start


def check_select(config: dict, model: BaseModel, data: BaseDataLoader) -> None:
    """With restarts, stop before any run folder when `restarts.select` names no output of the model: one forward
    in eval mode of two training examples without their labels, RNG forked (nothing of the run changes)."""
    spec = config["trainer"]["restarts"]
    if spec["starts"] == 1:
        return
    metric = spec["select"].split()[1]
    examples = data.train_set.__getitems__(list(range(min(2, len(data.train_set)))))
    batch = {key: value for key, value in examples.items() if key not in LABEL_FIELDS}
    training = model.training
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        outputs = model.eval()(batch)
    model.train(training)
    if metric not in outputs:
        raise ConfigError(f"config key 'trainer.restarts.select' names {metric!r}, which "
                          f"{config['arch']['type']} does not output; available: {', '.join(sorted(outputs))}")


@dataclass
class StartProgress:
    """Where a run is among its starts (plain types: saved in checkpoints).

    start: the start being trained (0-based); scores: the finished starts' scores, in order;
    logs: per start begun, its epochs as {"epoch", "step", "log", "schedules"};
    best, best_start: the training state (BaseTrainer.state_dict, without this progress) after the best
    finished start, and which start that is.
    """

    starts: int
    start: int = 0
    scores: list[float] = field(default_factory=list)
    logs: list[list[dict[str, Any]]] = field(default_factory=list)
    best: dict | None = None
    best_start: int | None = None

    @property
    def chosen(self) -> int | None:
        """The start that continues, once every start is finished (None before)."""
        return self.best_start if self.start == self.starts else None

    def record_epoch(self, epoch: int, step: int, log: dict[str, float], schedules: dict[str, float]) -> None:
        if len(self.logs) <= self.start:
            self.logs.append([])
        self.logs[self.start].append({"epoch": epoch, "step": step, "log": dict(log), "schedules": dict(schedules)})

    def finish_start(self, score: float, maximize: bool, state: dict) -> None:
        """Record the finished start's score; keep a copy of its training state if it is the best so far
        (a tie keeps the earlier start)."""
        if self.best_start is None or (score > self.scores[self.best_start] if maximize
                                       else score < self.scores[self.best_start]):
            self.best, self.best_start = copy.deepcopy(state), self.start
        self.scores.append(score)
        self.start += 1

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "StartProgress":
        return cls(**state)


class RestartsMixin:
    """The Trainer's part that trains the starts and continues the chosen one (`trainer.restarts`)."""

    def _init_restarts(self, data: BaseDataLoader) -> None:
        """Call at the end of the Trainer's __init__, before any step: keeps what a start is reset to."""
        spec = self.config["trainer"]["restarts"]
        self.restart_epochs = spec["epochs"]
        mode, self.restart_metric = spec["select"].split()
        self.restart_maximize = mode == "max"
        self.start_progress = StartProgress(spec["starts"]) if spec["starts"] > 1 else None
        self._data = data
        self._first_step_state = copy.deepcopy({
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
        })

    def state_dict(self, epoch: int) -> dict:
        """BaseTrainer's state, and the progress among the starts (`restarts`; None without restarts)."""
        state = super().state_dict(epoch)
        state["restarts"] = self.start_progress.state_dict() if self.start_progress is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume: the progress among the starts comes from the checkpoint (a run whose checkpoint has none
        was trained without restarts, and goes on without them)."""
        super().load_state_dict(state)
        progress = state.get("restarts")
        if progress is None and self.start_progress is not None:
            self.logger.warning("trainer.restarts: the checkpoint was written without restarts; the run goes on "
                                "from it without them")
        self.start_progress = StartProgress.from_state(progress) if progress is not None else None

    def _before_epochs(self) -> dict[str, float]:
        """The starts, when some are still to be trained: BaseTrainer.fit's hook."""
        if self.start_progress is None or self.start_progress.chosen is not None:
            return {}
        return self._train_starts()

    def _train_starts(self) -> dict[str, float]:
        """Train the remaining starts, then load the chosen one (its state after `restarts.epochs` epochs).
        Returns the chosen start's last epoch log."""
        progress = self.start_progress
        while progress.chosen is None:
            if self.start_epoch == 1 and progress.start > 0:
                self._reset_to_start(progress.start)
            for epoch in range(self.start_epoch, self.restart_epochs + 1):
                started = time.perf_counter()
                log = self._run_epoch(epoch)
                progress.record_epoch(epoch, self.global_step, log, self.schedules)
                if self.dist.is_main:
                    self._print_epoch(epoch, log, time.perf_counter() - started, False,
                                      f"start {progress.start + 1}/{progress.starts}, ", self.restart_epochs)
                if epoch == self.restart_epochs:
                    self._finish_start(epoch)  # after the last start: the chosen start's state, start_epoch after it
                self._save_checkpoints(epoch, improved=False, periodic=False)
            if progress.chosen is None:
                self.start_epoch = 1
        return progress.logs[progress.chosen][-1]["log"]

    def _finish_start(self, epoch: int) -> None:
        """Score the start that just ended; after the last one, continue the chosen start."""
        progress = self.start_progress
        score = self._start_score()
        self.logger.info("start %d/%d: %s %.6g", progress.start + 1, progress.starts, self.restart_metric, score)
        progress.finish_start(score, self.restart_maximize, BaseTrainer.state_dict(self, epoch))
        if progress.chosen is None:
            return
        chosen = progress.chosen
        BaseTrainer.load_state_dict(self, progress.best)
        progress.best = None  # loaded: later checkpoints need not carry it
        self.logger.info("restarts: %s by start %s; continuing start %d", self.restart_metric,
                         ", ".join(f"{s:.6g}" for s in progress.scores), chosen + 1)
        if self.dist.is_main:
            for start, score in enumerate(progress.scores):
                self.writer.run.add_scalar(f"restarts/{self.restart_metric}", score, start + 1)
            for entry in progress.logs[chosen]:
                self._write_epoch_scalars(entry["log"], entry["schedules"], entry["step"])

    def _reset_to_start(self, start: int) -> None:
        """The model as built under start_seed(seed, start), and the optimizers, lr schedulers and grad scaler
        as before the first step; the step count and the monitor begin again."""
        seed = start_seed(self.config["seed"], start)
        seed_everything(seed)  # the same on every rank: the same initial weights
        fresh = build_model(self.config, self._data)
        self.model_core.load_state_dict(fresh.state_dict())
        self.model_core.load_schedule_state(fresh.schedule_state())
        for name, opt in self.optimizers.items():
            opt.load_state_dict(self._first_step_state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(self._first_step_state["schedulers"][name])
        if self.scaler is not None:
            self.scaler.load_state_dict(self._first_step_state["grad_scaler"])
        self.global_step = 0
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        seed_everything(seed + self.dist.rank)

    @torch.no_grad()
    def _start_score(self) -> float:
        """The mean of the model output `restarts.select` names, in eval mode: over the validation split, or
        over the training split without its label fields when there is none."""
        means = self.valid_epoch() if self.val_loader is not None else self.eval_means(self._training_set())
        return means[self.restart_metric]  # an output of the model: `check_select` made sure
