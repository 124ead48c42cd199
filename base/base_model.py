"""BaseModel: the contract between an architecture and the Trainer.

A model takes a batch (a dict of tensors from the data loader) and returns a
dict of named scalar tensors; `out["loss"]` is minimised and is per data point
so that numbers compare across batch sizes. Everything else is logged.

Optional hooks the Trainer calls (the defaults do nothing):
  parameter_groups()       named groups, each can get its own optimizer
  after_optimizer_step()   e.g. the SVAE natural-gradient step of globals
  on_step_skipped()        a non-finite loss skipped the step (trainer.nan_policy=skip)
  on_epoch_end(epoch)      e.g. temperature annealing
  schedule_state() / load_schedule_state(state)   saved in checkpoints
  evaluate_batch(batch, iw_samples) -> per-example metrics for test.py
  summarize_evaluation(per_example) -> the final metrics
  visualize(writer, batch, step, tag)   images and figures for TensorBoard
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BaseModel(nn.Module):
    """Base class for every architecture. Subclasses implement `forward`."""

    #: names of the metrics `evaluate_batch` can return (for config `metrics`)
    eval_metrics: tuple[str, ...] = ()
    #: how many validation (or test) examples `visualize` gets
    visualization_size: int = 64

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named, disjoint parameter groups covering every trainable parameter."""
        return {"all": [p for p in self.parameters() if p.requires_grad]}

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (after all optimizers have stepped)."""

    def on_step_skipped(self) -> None:
        """Called instead of the optimizer steps when the loss was non-finite and the step is skipped."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called once at the end of every training epoch (1-based epoch number)."""

    def schedule_state(self) -> dict[str, Any]:
        """Schedule state outside the state_dict (plain numbers), saved in checkpoints."""
        return {}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore what `schedule_state` returned."""

    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       iw_samples: int) -> dict[str, torch.Tensor]:
        """Per-example metrics for test.py: {name: (B,) tensor} (or (B, ...) for summaries)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_batch")

    def summarize_evaluation(self, per_example: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Reduce the concatenated per-example metrics to the reported numbers (default: means)."""
        return {name: float(values.double().mean()) for name, values in per_example.items()}

    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Add model-specific images or figures to a TensorBoard SummaryWriter."""

    def __str__(self) -> str:
        n_params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{super().__str__()}\nTrainable parameters: {n_params}"
