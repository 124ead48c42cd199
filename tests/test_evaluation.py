"""The evaluation contract (base/metric.py, BaseModel.summarize_evaluation) and test.py's options end to end."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from base.base_model import BaseModel
from base.metric import Metric, PerExample, mean_of, ratio_of_sums, ratio_with_spread
from model.vae import VAE
from tests.test_vae import trained_vae  # noqa: F401  (the fixture: a small VAE trained on the pinwheel)
from trainer import jobs


class Declared(BaseModel):
    """Three metrics over per-example values `a` and `b`; one of them reports two keys."""

    metrics = (
        Metric("mean_a", mean_of("a"), "mean of a"),
        Metric("ratio", lambda per_example: {"ratio": ratio_of_sums("a", "b")(per_example),
                                             "examples": len(per_example["a"])}, "sum of a / sum of b"),
        Metric("mean_b", mean_of("b"), "mean of b"),
    )

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        return {"keys_seen": sorted(per_example)}


PER_EXAMPLE = {"a": torch.tensor([1.0, 2.0, 6.0]), "b": torch.tensor([2.0, 2.0, 2.0])}


def test_only_the_named_metrics_are_reported():
    assert Declared.metric_names() == ("mean_a", "ratio", "mean_b")
    assert Declared().summarize_evaluation(PER_EXAMPLE, ("mean_b",)) == {"mean_b": 2.0, "keys_seen": ["a", "b"]}
    assert Declared().summarize_evaluation(PER_EXAMPLE, ()) == {"keys_seen": ["a", "b"]}


def test_a_reduce_returning_a_dict_reports_all_its_keys_and_the_summary_follows():
    results = Declared().summarize_evaluation(PER_EXAMPLE, ("ratio", "mean_a"))
    assert results == {"mean_a": 3.0, "ratio": 1.5, "examples": 3, "keys_seen": ["a", "b"]}
    assert list(results) == ["mean_a", "ratio", "examples", "keys_seen"]  # declaration order, then the summary


def test_the_elbo_reports_its_median_and_worst_example_per_frame_beside_the_mean():
    """Per frame: (-3 / 3, -40 / 4, -10 / 5) = (-1, -10, -2); the mean is the ratio of the sums, -53 / 12."""
    per_example = {"elbo": torch.tensor([-3.0, -40.0, -10.0]), "frames": torch.tensor([3.0, 4.0, 5.0])}
    assert ratio_with_spread("elbo", "frames")(per_example) == {
        "elbo": pytest.approx(-53 / 12), "elbo_median": -2.0, "elbo_worst": -10.0}


def test_evaluate_passes_iw_samples_and_the_configured_metrics(trained_vae, monkeypatch):  # noqa: F811
    checkpoint = trained_vae.run_dir / "checkpoints" / "last.pt"
    asked = []
    iw_log_likelihood = VAE.iw_log_likelihood

    def spy(self: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        asked.append(num_samples)
        return iw_log_likelihood(self, x, num_samples)

    monkeypatch.setattr(VAE, "iw_log_likelihood", spy)
    by_k = {k: jobs.evaluate(checkpoint, device="cpu", batch_size=50, iw_samples=k, progress=False)
            for k in (1, 50)}
    assert asked == [1, 1, 50, 50]  # two test batches per run
    assert by_k[1]["iw_samples"] == 1 and by_k[50]["iw_samples"] == 50
    assert by_k[50]["iw_nll"] < by_k[1]["iw_nll"]
    assert by_k[1]["iw_nll"] == pytest.approx(-by_k[1]["elbo"], abs=0.3)  # K = 1 is an ELBO estimate

    elbo_only = jobs.evaluate(checkpoint, device="cpu", overrides=['metrics=["elbo"]'], progress=False)
    assert "elbo" in elbo_only and "iw_nll" not in elbo_only and "iw_samples" not in elbo_only
