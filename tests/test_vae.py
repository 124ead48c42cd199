"""The VAE baseline: its math against independent computations, and test.py end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch

import test as test_script
from model.importance import iw_log_likelihood
from model.likelihoods import BernoulliLikelihood, GaussianLikelihood, StudentTLikelihood
from model.diagonal_gaussian import gaussian_kl_standard
from model.vae import VAE
from trainer import jobs
from trainer.components import load_and_check
from trainer.jobs import train


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(gaussian_kl_standard(mu, logvar), expected)
    samples = q.rsample((200000,))
    monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).sum(-1).mean(0)
    assert torch.allclose(monte_carlo, expected, atol=0.03)


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    logits, x = torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 2, (4, 6)).double()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(BernoulliLikelihood.log_prob(logits, x), expected)
    params, y = torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    mean, raw = params.chunk(2, -1)
    std = torch.exp(0.5 * 10 * torch.tanh(raw / 10))
    assert torch.allclose(GaussianLikelihood.log_prob(params, y), torch.distributions.Normal(mean, std).log_prob(y).sum(-1))
    for df in (1.0, 3.0, 30.0):
        student = torch.distributions.StudentT(df, mean, std)
        assert torch.allclose(StudentTLikelihood(df).log_prob(params, y), student.log_prob(y).sum(-1))


def test_student_t_samples_have_the_location_and_the_scaled_variance():
    """Var = scale^2 df / (df - 2) for df > 2."""
    torch.manual_seed(0)
    params = torch.tensor([[1.0, -2.0, math.log(0.25), math.log(4.0)]], dtype=torch.float64).expand(400_000, 4)
    samples = StudentTLikelihood(5.0).sample(params)
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.tensor([0.25, 4.0], dtype=torch.float64) * 5 / 3, rtol=0.05,
                               atol=0)


def test_iw_estimate_is_exact_for_a_known_model_and_independent_of_chunks(monkeypatch):
    """q = p(z | x) gives constant weights: every K returns log p(x) exactly, whatever the chunking."""
    log_px = torch.tensor([-1.5, -2.0, -0.3], dtype=torch.float64)
    calls = []

    def log_weights(n: int) -> torch.Tensor:
        calls.append(n)
        return log_px.expand(n, 3)

    assert torch.allclose(iw_log_likelihood(log_weights, 1000, 3), log_px)
    monkeypatch.setattr("model.importance.ROWS_PER_CHUNK", 30)
    calls.clear()
    assert torch.allclose(iw_log_likelihood(log_weights, 1000, 3), log_px)
    assert calls == [10] * 100  # bounded chunks of K


def test_iw_average_is_the_log_mean_exp(monkeypatch):
    torch.manual_seed(0)
    weights = torch.randn(50, 4, dtype=torch.float64)
    monkeypatch.setattr("model.importance.ROWS_PER_CHUNK", 28)  # chunks of 7 samples: 7 x 7 + 1
    served = []

    def log_weights(n: int) -> torch.Tensor:
        start = sum(served)
        served.append(n)
        return weights[start: start + n]

    result = iw_log_likelihood(log_weights, 50, 4)
    assert served == [7] * 7 + [1]
    assert torch.allclose(result, torch.logsumexp(weights, 0) - math.log(50))


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A small VAE trained briefly on the pinwheel data (Gaussian likelihood)."""
    base = load_and_check("configs/vae_pinwheel.yaml", [
        "trainer.epochs=30", f"trainer.save_dir={tmp_path_factory.mktemp('saved')}", "trainer.verbosity=0",
        "trainer.tensorboard=true", "trainer.visualize_every=100", "arch.args.kl_warmup_epochs=0",
        "data_loader.args.points_per_class=40", "data_loader.args.test_points_per_class=20"])
    return train(base)


def test_iw_nll_is_below_the_negative_elbo_and_falls_with_k(trained_vae):
    checkpoint = trained_vae.run_dir / "checkpoints" / "last.pt"
    by_k = {k: jobs.evaluate(checkpoint, device="cpu", iw_samples=k, progress=False) for k in (1, 10, 300)}
    for results in by_k.values():
        assert results["iw_nll"] <= -results["elbo"] + 0.05
    assert by_k[1]["iw_nll"] > by_k[10]["iw_nll"] > by_k[300]["iw_nll"]
    assert abs(by_k[1]["iw_nll"] + by_k[1]["elbo"]) < 0.3  # K = 1 is an ELBO estimate


def test_test_py_writes_metrics_next_to_checkpoints(trained_vae, capsys):
    checkpoint = trained_vae.run_dir / "checkpoints" / "model_best.pt"
    assert test_script.main(["-r", str(checkpoint), "--iw-samples", "20", "--bs", "25", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "iw_nll" in out and "elbo" in out
    metrics = json.loads((trained_vae.run_dir / "test_metrics.json").read_text())
    assert {"elbo", "iw_nll", "iw_samples", "num_examples", "epoch"} <= set(metrics)
    assert metrics["iw_samples"] == 20 and metrics["num_examples"] == 100
    assert math.isfinite(metrics["elbo"]) and metrics["iw_nll"] < -metrics["elbo"] + 0.05


def test_test_py_rejects_a_checkpoint_of_another_architecture(trained_vae, capsys):
    checkpoint = trained_vae.run_dir / "checkpoints" / "last.pt"
    code = test_script.main(["-r", str(checkpoint), "--set", "arch.args.latent_dim=3"])
    assert code == 2 and "does not fit the model VAE" in capsys.readouterr().err
    code = test_script.main(["-r", str(checkpoint), "--set", "arch.type=LinearTest", "--set", "arch.args={}",
                                 "--set", "metrics=null"])
    assert code == 2 and "architecture 'VAE') does not fit" in capsys.readouterr().err


def test_image_grids_for_image_data(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = VAE(data_shape=(1, 28, 28), latent_dim=4, hidden_dims=[16])
    writer = SummaryWriter(str(tmp_path))
    model.visualize(writer, {"x": torch.rand(8, 1, 28, 28).round()}, 3, "val")
    writer.close()
    images = EventAccumulator(str(tmp_path)).Reload().Tags()["images"]
    assert {"val/reconstructions", "val/samples"} <= set(images)


def test_batch_norm_vae_evaluates_importance_samples():
    """The decoder sees (K, B, d) importance samples: BatchNorm must get them flattened."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, hidden_dims=[16, 8], activation="elu", batch_norm=True).eval()
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()
    out = model.evaluate_batch({"x": x}, ("elbo", "iw_nll"), {"iw_samples": 10})
    assert out["iw_nll"].shape == (6,) and torch.isfinite(out["iw_nll"]).all()
