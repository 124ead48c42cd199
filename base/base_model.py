"""BaseModel: the contract between an architecture and the Trainer.

A model takes a batch (a dict of tensors from the data loader) and returns a
dict of named scalar tensors on the batch's device (numbers that vary from step to
step as tensors: a compiled step would recompile for a new Python number); `out["loss"]` is
minimised and is per data point so that numbers compare across batch sizes. Everything else is logged, except
`out["statistics"]`: detached tensors, each with a leading dim of 1, in dicts or NamedTuples (`utils/tree.py`),
that the Trainer sums over DataParallel replicas (dim 0) and DDP ranks and hands
to `after_optimizer_step` (the SVAEs' natural-gradient statistics). `forward`
changes no state.

Optional hooks the Trainer calls (the defaults do nothing):
  parameter_groups()       named groups, each can get its own optimizer
  after_optimizer_step(statistics, taken)   e.g. the SVAE natural-gradient step of globals
  begin_epoch(epoch, training_set)   before every training epoch, with the whole training set in a fixed
                           order and without labels: a staged start (SVAE-SLDS's AR-HMM start)
  set_epochs_done(epochs)  after every epoch: schedules move on (KL warm-up, temperature annealing)
  schedule_state() / load_schedule_state(state)   saved in checkpoints
  schedule_values()        logged once per epoch as schedule/<name> (KL weight, temperature)
  visualize(writer, batch, step, tag)   images and figures for TensorBoard
Evaluation (test.py): the class lists its `metrics` (base/metric.py);
  evaluate_batch(batch, metrics, options) -> per-example values of those metrics
  model_summary(per_example) -> what is reported besides the metrics (learned graphs, ...)
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from base.metric import Metric, PerExample


#: batch fields that carry labels: never handed to `begin_epoch` (unsupervised starts read no labels)
LABEL_FIELDS = ("y", "labels")


class BaseModel(nn.Module):
    """Base class for every architecture. Subclasses implement `forward`."""

    #: the test metrics `evaluate_batch` can compute (config `metrics` chooses among them by name)
    metrics: tuple[Metric, ...] = ()
    #: how many validation (or test) examples `visualize` gets
    visualization_size: int = 64
    #: outputs that are diagnostics, mostly constant (retry counts, edge counts): TensorBoard gets them only
    #: when their value changes, so that they draw no flat line
    diagnostics: tuple[str, ...] = ()
    #: what the per-example means average over: "point", "image" or "frame". TensorBoard's tags carry it
    #: (epoch/elbo_per_point), so that a pinwheel's -6 and an MNIST image's -224 never share a chart
    unit: str = "example"

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named, disjoint parameter groups covering every trainable parameter."""
        return {"all": [p for p in self.parameters() if p.requires_grad]}

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(metric.name for metric in cls.metrics)

    def metric_problem(self, name: str, fields: tuple[str, ...]) -> str | None:
        """Why metric `name` cannot be computed on data whose batches have `fields`, or None when it can
        (by default: a batch field it `needs` is missing)."""
        metric = next(m for m in self.metrics if m.name == name)
        missing = [field for field in metric.needs if field not in fields]
        if missing:
            return f"it needs the batch field {missing[0]!r}, and the data's batches have {', '.join(fields)}"
        return None

    def after_optimizer_step(self, statistics: Any | None,
                             taken: torch.Tensor | None = None) -> None:
        """Called after every optimizer step (after all optimizers have stepped), with the step's
        `out["statistics"]` summed over replicas and ranks (None when forward returned none). `taken`: a 0-d
        bool tensor, False when the step's loss was not finite and the optimizers skipped it on the device;
        the hook must then change nothing, decided on the device too (no host read). None: taken."""

    def begin_epoch(self, epoch: int, training_set: Callable[[], Iterable[dict[str, torch.Tensor]]]) -> str | None:
        """Called before training epoch `epoch` (1-based) on every rank. `training_set()` yields the whole
        training split in batches on the model's device, in a fixed order, without label fields (`LABEL_FIELDS`),
        so that what a model computes from it is the same on every rank and after a resume. Returns a line for
        the run's log when the model changed, else None."""
        return None

    def set_epochs_done(self, epochs: int) -> None:
        """Called once at the end of every training epoch with the number of epochs trained (the 1-based
        number of the epoch that ended): schedules take their values for the next epoch."""

    def schedule_state(self) -> dict[str, Any]:
        """Schedule state outside the state_dict (plain numbers), saved in checkpoints."""
        return {}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore what `schedule_state` returned."""

    def schedule_values(self) -> dict[str, float]:
        """The current values of the model's schedules (e.g. the KL warm-up weight), logged once per
        epoch as `schedule/<name>`."""
        return {}

    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per-example values {key: (B, ...) tensor} of a test batch: what the `metrics` named (and
        `model_summary`) read. `options`: evaluation settings, e.g. {"iw_samples": K}."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_batch")

    def summarize_evaluation(self, per_example: PerExample, metrics: tuple[str, ...]) -> dict[str, Any]:
        """The reported results: each named metric's reduction of the concatenated per-example values,
        then `model_summary`."""
        results: dict[str, Any] = {}
        for metric in self.metrics:
            if metric.name in metrics:
                results.update(metric.report(per_example))
        results.update(self.model_summary(per_example))
        return results

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """What test.py reports besides the metrics (e.g. learned graphs); JSON-serialisable values."""
        return {}

    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Add model-specific images or figures to a TensorBoard SummaryWriter."""

    def __str__(self) -> str:
        n_params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{super().__str__()}\nTrainable parameters: {n_params}"
