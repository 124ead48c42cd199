"""SVAE-LDS: the dot-video data, the local KL and the SVI step against dense-Gaussian and
standard-parameter computations, prediction, numerical safety, and the architecture end to end
(train, resume, test.py, TensorBoard figure)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as td

from data_loader.dots import DotVideoDataLoader, render_dots, triangle_wave
from model.expfam import mniw, niw
from model.svae.lds import SVAELDS
from tests.conftest import ROOT, assert_finite_under_extreme_encoder, event_tags, train_halfway_and_resume
from tests.test_kalman import dense_joint
from trainer import jobs
from utils.config import read_config_file
from utils.distributed import sum_statistics
from utils.errors import ConfigError

DT = torch.float64


# ---------------------------------------------------------------- data
def test_triangle_wave_and_dot_rendering():
    t = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.25], dtype=DT)
    torch.testing.assert_close(triangle_wave(t), torch.tensor([-1.0, 0.0, 1.0, 0.0, -1.0, -0.5], dtype=DT))
    # v = 1, x0 = -1: position = triangle(t); at t = 1 the dot sits on the last pixel
    frames = render_dots(torch.tensor([0.0, 1.0], dtype=DT), torch.tensor(1.0, dtype=DT),
                         torch.tensor(-1.0, dtype=DT), image_width=5, render_sigma=0.15)
    assert frames.shape == (2, 5)
    assert frames[0].argmax() == 0 and frames[1].argmax() == 4 and frames.max() == 1.0


def test_video_is_one_continuous_video_cut_into_chunks():
    data = DotVideoDataLoader(num_frames=200, duration=20.0, chunk_len=10, test_frames=40, noise_sigma=0.1)
    train_set, test_set = data.train_set.tensors, data.test_set.tensors
    assert train_set["x"].shape == (20, 10, 20) and test_set["x"].shape == (4, 10, 20)
    assert data.data_shape == (10, 20)
    dt = 20.0 / 199
    full = render_dots(torch.arange(240, dtype=DT) * dt, torch.tensor(0.75, dtype=DT), torch.tensor(0.0, dtype=DT),
                       image_width=20, render_sigma=0.15).float()
    torch.testing.assert_close(train_set["clean"].reshape(200, 20), full[:200])
    torch.testing.assert_close(test_set["clean"].reshape(40, 20), full[200:])  # the continuation
    noise = (train_set["x"] - train_set["clean"]).flatten()
    assert abs(float(noise.std()) - 0.1) < 0.005 and abs(float(noise.mean())) < 0.005
    again = DotVideoDataLoader(num_frames=200, duration=20.0, chunk_len=10, test_frames=40)
    assert torch.equal(again.train_set.tensors["x"], train_set["x"])
    other = DotVideoDataLoader(num_frames=200, duration=20.0, chunk_len=10, test_frames=40, data_seed=5)
    assert not torch.equal(other.train_set.tensors["x"], train_set["x"])


def test_independent_sequences_have_their_own_phases_and_speeds():
    data = DotVideoDataLoader(mode="sequences", num_sequences=30, num_test_sequences=7, chunk_len=12)
    clean = data.train_set.tensors["clean"]
    assert clean.shape == (30, 12, 20) and data.test_set.tensors["x"].shape == (7, 12, 20)
    first_positions = clean[:, 0].argmax(-1)
    assert len(first_positions.unique()) > 10
    with pytest.raises(ConfigError, match="mode"):
        DotVideoDataLoader(mode="film")


# ---------------------------------------------------------------- model math
def tiny_model(num_train: int = 8, rho: float = 0.5, seed: int = 0, **kwargs) -> SVAELDS:
    torch.manual_seed(seed)
    kwargs.setdefault("prefix_len", 4)
    kwargs.setdefault("horizon", 3)
    return SVAELDS((8, 6), num_train, latent_dim=3, hidden_dims=[10], rho=rho, **kwargs)


def random_video(B: int = 4, T: int = 8, P: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.rand(B, T, P, generator=gen)
    return {"x": clean + 0.1 * torch.randn(B, T, P, generator=gen), "clean": clean}


def svi_step(model: SVAELDS, out: dict) -> None:
    """What the Trainer does after the optimizer step (one process, one replica)."""
    model.after_optimizer_step(sum_statistics(out["statistics"]))


def perturb_globals(model: SVAELDS, steps: int = 3) -> None:
    """Move q(theta) away from the prior with a few SVI steps on random statistics."""
    model.train()
    for seed in range(steps):
        svi_step(model, model(random_video(seed=100 + seed)))


def test_local_kl_equals_the_dense_gaussian_computation():
    """KL(q(x) || p~(x)) = -H[q] - E_q[log p~(x)], with q the dense posterior and p~ the expected prior chain."""
    model = tiny_model()
    perturb_globals(model)
    batch = random_video(seed=1)
    potentials = model.expected_globals().potentials
    post = model.infer(batch["x"], potentials, num_samples=1)
    kl, node_J, node_h = post.kl, post.node_J, post.node_h

    B, T, n = node_h.shape
    _, mean, cov = dense_joint(potentials, node_J.detach(), node_h.detach())
    zeros = torch.zeros_like(node_J)
    prior_J = torch.linalg.inv(dense_joint(potentials, zeros, zeros)[2])  # the prior chain's precision
    prior_h = torch.zeros(B, T * n, dtype=DT)
    prior_h[:, :n] = potentials.init_h
    second = cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
    expected_log_prior = (-0.5 * (prior_J * second).sum((-2, -1)) + (prior_h * mean).sum(-1)
                          + potentials.init_const + (T - 1) * potentials.pair_const)
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    torch.testing.assert_close(kl.detach(), -entropy - expected_log_prior, atol=1e-8, rtol=0)


@pytest.mark.parametrize("rho,num_train", [(1.0, 4), (0.3, 12)])
def test_svi_step_equals_the_closed_form_update(rho, num_train):
    """With rho = 1 and the whole data set as the batch, one step gives the conjugate NIW and MNIW posteriors
    (standard-parameter formulas) given the smoothed statistics of a dense Gaussian; with rho < 1 the
    natural-parameter blend."""
    model = tiny_model(num_train, rho)
    perturb_globals(model, 1)
    batch = random_video(seed=2)
    q_niw0, q_mniw0 = model.pgm.natural("niw"), model.pgm.natural("mniw")
    q_niw0, q_mniw0 = type(q_niw0)(*(t.clone() for t in q_niw0)), type(q_mniw0)(*(t.clone() for t in q_mniw0))
    potentials = model.expected_globals().potentials
    post = model.infer(batch["x"], potentials, 1)
    node_J, node_h = post.node_J, post.node_h
    svi_step(model, model.train()(batch))

    B, T, n = node_h.shape
    _, mean, cov = dense_joint(potentials, node_J.detach(), node_h.detach())
    second = (cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)).sum(0)  # (T n, T n) summed over sequences
    block = lambda s, t: second[s * n:(s + 1) * n, t * n:(t + 1) * n]  # noqa: E731
    scale = num_train / B
    x1x1, x1 = scale * block(0, 0), scale * mean[:, :n].sum(0)
    xx = scale * sum(block(t, t) for t in range(T - 1))
    xy = scale * sum(block(t, t + 1) for t in range(T - 1))
    yy = scale * sum(block(t + 1, t + 1) for t in range(T - 1))

    m0, kappa0, S0, nu0 = niw.natural_to_standard(model.pgm.natural("niw", prior=True))
    kappa = kappa0 + scale * B
    m = (kappa0 * m0 + x1) / kappa
    S = S0 + x1x1 + kappa0 * torch.outer(m0, m0) - kappa * torch.outer(m, m)
    target_niw = niw.standard_to_natural(m, kappa, S, nu0 + scale * B)

    M0, K0, S0, nu0 = mniw.natural_to_standard(model.pgm.natural("mniw", prior=True))
    K0_inv = torch.linalg.inv(K0)
    K_inv = K0_inv + xx
    M = (M0 @ K0_inv + xy.mT) @ torch.linalg.inv(K_inv)
    S = S0 + yy + M0 @ K0_inv @ M0.mT - M @ K_inv @ M.mT
    target_mniw = mniw.standard_to_natural(M, torch.linalg.inv(K_inv), S, nu0 + scale * B * (T - 1))

    for got, old, target in [*zip(model.pgm.natural("niw"), q_niw0, target_niw),
                             *zip(model.pgm.natural("mniw"), q_mniw0, target_mniw)]:
        torch.testing.assert_close(got, (1 - rho) * old + rho * target, atol=1e-8, rtol=1e-8)


def test_elbo_parts_and_gradients():
    model = tiny_model().train()
    out = model(random_video())
    out.pop("statistics")
    torch.testing.assert_close(out["elbo"], out["recon"] - out["kl_local"] - out["kl_global"])
    torch.testing.assert_close(out["loss"], -out["elbo"])
    assert out["kl_local"] > 0 and out["kl_global"] == 0  # q(theta) starts at the prior
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(name.startswith(("q_", "prior_")) for name, _ in model.named_parameters())


def test_parallel_inference_gives_the_same_objective():
    batch = random_video()
    outs = []
    for method in ("sequential", "parallel"):
        model = tiny_model(inference=method)
        perturb_globals(model)
        torch.manual_seed(1)
        outs.append(model.train()(batch))
    for key in ("elbo", "recon", "kl_local", "kl_global"):
        torch.testing.assert_close(outs[0][key], outs[1][key], atol=1e-6, rtol=1e-6)


def test_forecast_follows_the_point_dynamics():
    """x_P+1 = A x_P + eps: the sampled continuations' first step has mean M E[x_P] and covariance
    M Cov[x_P] M^T + Psi / nu (the dynamics at their point estimate), from the prefix's posterior samples."""
    model = tiny_model(prefix_len=4, horizon=3).eval()
    perturb_globals(model)
    torch.manual_seed(0)
    post = model.infer(random_video()["x"][:, :4], model.expected_globals().potentials, 20000)
    future = model.pgm.forecast(post, 3, 20000)
    assert future.shape == (20000, 4, 3, 3)
    M, _, Psi, nu = mniw.natural_to_standard(model.pgm.natural("mniw"))
    last = post.samples[:, :, -1]
    torch.testing.assert_close(future[:, :, 0].mean(0), last.mean(0) @ M.mT, atol=0.02, rtol=0)
    def covariance(x: torch.Tensor) -> torch.Tensor:  # (S, B, n) -> (B, n, n)
        centred = x - x.mean(0)
        return torch.einsum("sbi,sbj->bij", centred, centred) / len(x)

    torch.testing.assert_close(covariance(future[:, :, 0]), M @ covariance(last) @ M.mT + Psi / nu, atol=0.03,
                               rtol=0.05)


def test_prediction_sees_only_the_prefix():
    model = tiny_model(prefix_len=4, horizon=3).eval()
    perturb_globals(model)
    model.eval()
    batch = random_video()
    changed = batch["x"].clone()
    changed[:, 4:] = torch.rand_like(changed[:, 4:])
    torch.manual_seed(0)
    mean, samples = model.predict(batch["x"], 2)
    assert mean.shape == (4, 7, 6) and samples.shape == (2, 4, 7, 6)
    torch.manual_seed(0)
    torch.testing.assert_close(model.predict(changed, 2)[0], mean)
    metrics = ("elbo", "pred_mse", "pred_mse_repeat_last")
    predictions = []  # pred_mse scores the prediction that `predict` returns
    model.predict = lambda *args: predictions.append(type(model).predict(model, *args)) or predictions[-1]
    per_example = model.evaluate_batch(batch, metrics, {"iw_samples": 1})
    mean = predictions[0][0]
    truth = batch["clean"][:, 4:7]
    values = per_example["pred_values"]
    assert values.tolist() == [3 * 6] * 4
    torch.testing.assert_close(per_example["pred_sq_error"] / values, ((mean[:, 4:] - truth) ** 2).mean((1, 2)),
                               check_dtype=False)
    torch.testing.assert_close(per_example["repeat_sq_error"] / values,
                               ((batch["x"][:, 3:4] - truth) ** 2).mean((1, 2)), check_dtype=False)
    results = model.summarize_evaluation(per_example, metrics)
    assert results["pred_mse"] == pytest.approx(float(((mean[:, 4:] - truth) ** 2).mean()))
    assert len(results["dynamics_eigenvalue_moduli"]) == 3
    assert results["dynamics_eigenvalue_moduli"] == sorted(results["dynamics_eigenvalue_moduli"], reverse=True)


def test_forward_changes_no_state():
    """The statistics travel in the output: a forward pass whose step is never taken (a skipped step)
    leaves the globals as they were."""
    model = tiny_model().train()
    before = [b.clone() for b in model.buffers()]
    out = model(random_video())
    assert out["statistics"].count.tolist() == [4.0]
    model.after_optimizer_step(None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_extreme_encoder_outputs_stay_finite():
    x = random_video()["x"]
    assert_finite_under_extreme_encoder(tiny_model(), [x, x * 1e6], 3)


# ---------------------------------------------------------------- end to end
@pytest.fixture
def lds_config(tmp_path) -> dict:
    """configs/svae_lds.yaml shrunk: 12 chunks of 12 frames, latent 3, 2 epochs of 3 steps."""
    config = read_config_file(ROOT / "configs" / "svae_lds.yaml")
    config["arch"]["args"].update(latent_dim=3, hidden_dims=[8], prefix_len=6, horizon=5, eval_samples=2)
    config["data_loader"]["args"].update(num_frames=144, duration=14.3, chunk_len=12, test_frames=36,
                                         batch_size=4)
    config["trainer"].update(epochs=2, len_epoch=3, save_dir=str(tmp_path / "saved"), save_period=1,
                             verbosity=0, tensorboard=True, visualize_every=1)
    return config


@pytest.mark.integration
def test_train_resume_and_evaluate(lds_config):
    run_dir, state = train_halfway_and_resume(lds_config, epochs=4)
    assert {"pgm.q_niw_phi", "pgm.q_mniw_v_inv", "pgm.q_mniw_nu"} <= state["model"].keys()
    path = run_dir / "checkpoints" / "last.pt"

    results = jobs.evaluate(path, progress=False)
    assert {"elbo", "pred_mse", "pred_mse_repeat_last", "dynamics_eigenvalue_moduli"} <= results.keys()
    assert results["num_examples"] == 3 and results["prefix_len"] == 6 and results["horizon"] == 5
    assert results["pred_mse"] > 0 and results["pred_mse_repeat_last"] > 0
    assert json.loads((run_dir / "test_metrics.json").read_text())["elbo"] == results["elbo"]

    assert "val/predictions_0" in event_tags(run_dir, "val")["images"]
    assert "test/predictions_0" in event_tags(run_dir, "test")["images"]
    assert {"epoch/kl_local_per_frame", "epoch/kl_global_per_frame", "epoch/recon_per_frame", "epoch/elbo_per_frame"} <= \
        set(event_tags(run_dir, "train")["scalars"])


@pytest.mark.parametrize("likelihood", ["gaussian", "sigmoid_gaussian", "bernoulli"])
def test_each_likelihood_against_torch_distributions(likelihood):
    """log p(y | x) summed over frames, and the decoded mean, against torch.distributions at the decoder's
    outputs: identity mean (gaussian), sigmoid mean (sigmoid_gaussian, the dots' default), logits (bernoulli)."""
    model = tiny_model(likelihood=likelihood).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 3, generator=gen, dtype=DT)  # (S, B, T, n)
    y = torch.rand(4, 8, 6, generator=gen, dtype=DT)
    mean, raw = model.decoder(x)
    if likelihood == "bernoulli":
        y = y.round()
        dist = td.Bernoulli(logits=mean)
    else:
        loc = torch.sigmoid(mean) if likelihood == "sigmoid_gaussian" else mean
        dist = td.Normal(loc, torch.exp(0.5 * 10 * torch.tanh(raw / 10)))
    torch.testing.assert_close(model.log_likelihood(y, x), dist.log_prob(y).sum((-2, -1)))
    torch.testing.assert_close(model.decode_mean(x, DT), dist.mean)
