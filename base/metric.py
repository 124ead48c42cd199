"""Test metrics as declarations: a model lists its `Metric`s once; test.py asks `evaluate_batch` for the
per-example values of the chosen ones, concatenates them over the test split and lets each metric reduce
them to what is reported.

Per-example values are tensors with the examples on dim 0. A metric may read any of them (a clustering
metric reads the assignments and the labels), so `evaluate_batch` returns, for each requested metric,
everything that metric's `reduce` reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

PerExample = Mapping[str, torch.Tensor]

#: what test.py passes to `evaluate_batch` unless told otherwise
DEFAULT_OPTIONS: dict[str, Any] = {"iw_samples": 100}


@dataclass(frozen=True)
class Metric:
    """A reported test metric.

    Args:
        name: the config `metrics` entry and the key of its value in test_metrics.json.
        reduce: per-example values (concatenated over the test split) -> the reported value, or a dict of
            reported values (its own under `name`, plus what belongs with it, e.g. the prediction horizon).
        doc: one line for the README and error messages: what is measured, in which unit.
        needs: the batch fields it reads besides "x" (e.g. "y", "labels"): without them in the data it is not
            computed by default, and naming it in the config is an error.
    """

    name: str
    reduce: Callable[[PerExample], Any]
    doc: str = ""
    needs: tuple[str, ...] = ()

    def report(self, per_example: PerExample) -> dict[str, Any]:
        value = self.reduce(per_example)
        return dict(value) if isinstance(value, dict) else {self.name: value}


def mean_of(key: str) -> Callable[[PerExample], float]:
    """Reduction: the mean over examples of per-example values (N,)."""
    return lambda per_example: float(per_example[key].double().mean())


def ratio_of_sums(numerator: str, denominator: str) -> Callable[[PerExample], float]:
    """Reduction: sum of `numerator` / sum of `denominator` over examples, e.g. nats per frame."""
    return lambda per_example: float(per_example[numerator].double().sum() / per_example[denominator].double().sum())


def ratio_with_spread(numerator: str, denominator: str) -> Callable[[PerExample], dict[str, float]]:
    """Reduction: sum of `numerator` / sum of `denominator` under the numerator's name (e.g. the ELBO in nats per
    frame), with the median and the worst (smallest) example of the per-example ratio beside it under
    `{numerator}_median` and `{numerator}_worst`, so that a mean moved by a few examples shows."""
    def reduce(per_example: PerExample) -> dict[str, float]:
        per_frame = per_example[numerator].double() / per_example[denominator].double()
        return {numerator: ratio_of_sums(numerator, denominator)(per_example),
                f"{numerator}_median": float(per_frame.median()), f"{numerator}_worst": float(per_frame.min())}
    return reduce
