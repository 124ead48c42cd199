"""Long runs, kept out of the default suite: python -m pytest -m slow.

Every threshold is a baseline computed here on the same data (the best Gaussian, a Gaussian mixture fitted by EM,
linear-Gaussian autoregressions, predictors that ignore the observed prefix, the same model with its latents
removed) or a known bound of the data (the pixel-noise ceiling, SVAE.md section 4)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from model.metrics import adjusted_rand_index
from trainer import jobs
from trainer.components import build_data, build_model, load_and_check
from trainer.jobs import train
from utils.checkpoint import load_checkpoint, load_model_weights

F64 = torch.float64


def best_gaussian_nll(points: torch.Tensor) -> float:
    """Mean NLL (nats per point) of points (N, D) under the full-covariance Gaussian fitted to them by maximum
    likelihood: no Gaussian does better on these points, so neither does a VAE whose latent carries nothing
    (its model is a Gaussian)."""
    x = points.to(F64)
    return float(-MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0)).log_prob(x).mean())


def gaussian_mixture_em(x: torch.Tensor, num_components: int, iterations: int = 200, restarts: int = 10,
                        seed: int = 0) -> tuple[torch.Tensor, MultivariateNormal]:
    """A full-covariance Gaussian mixture fitted by EM to x (N, D): of `restarts` starts from random data points,
    the one with the best training likelihood. Returns the log weights (K,) and the components (batch (K,))."""
    gen = torch.Generator().manual_seed(seed)
    x = x.to(F64)
    n, d = x.shape
    best, best_ll = None, -math.inf
    for _ in range(restarts):
        means = x[torch.randperm(n, generator=gen)[:num_components]]
        covs = torch.cov(x.T).expand(num_components, d, d).clone()
        log_weights = torch.full((num_components,), -math.log(num_components), dtype=F64)
        for _ in range(iterations):
            r = torch.softmax(MultivariateNormal(means, covs).log_prob(x[:, None]) + log_weights, -1)  # (N, K)
            counts = r.sum(0) + 1e-10
            log_weights, means = (counts / n).log(), (r.T @ x) / counts[:, None]
            diff = x[:, None] - means  # (N, K, D)
            covs = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / counts[:, None, None]
            covs = covs + 1e-6 * torch.eye(d, dtype=F64)
        components = MultivariateNormal(means, covs)
        ll = float(torch.logsumexp(components.log_prob(x[:, None]) + log_weights, -1).mean())
        if ll > best_ll:
            best, best_ll = (log_weights, components), ll
    return best


def autoregression_inputs(x: torch.Tensor, order: int) -> torch.Tensor:
    """[x_{t-1}, ..., x_{t-order}, 1] for t = order..T-1: (B, T - order, order P + 1), from x (B, T, P)."""
    T = x.shape[1]
    past = [x[:, order - j - 1:T - j - 1] for j in range(order)]
    return torch.cat([*past, torch.ones(*x.shape[:1], T - order, 1, dtype=x.dtype)], -1)


def fit_autoregression(x: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood linear-Gaussian autoregression x_t ~ N(W^T [x_{t-1}, ..., x_{t-order}, 1], S) over the
    training sequences x (B, T, P) (order 0: one Gaussian for every frame). Returns W (order P + 1, P), S (P, P)."""
    x = x.to(F64)
    inputs, targets = autoregression_inputs(x, order).flatten(0, 1), x[:, order:].flatten(0, 1)
    W = torch.linalg.lstsq(inputs, targets).solution
    residuals = targets - inputs @ W
    return W, residuals.T @ residuals / len(residuals)


def autoregression_log_likelihood(train_x: torch.Tensor, test_x: torch.Tensor, order: int) -> float:
    """Held-out log-likelihood in nats per frame of the linear-Gaussian autoregression of this order fitted to the
    training sequences; frame t < order of a sequence is predicted by the fitted autoregression of order t."""
    test_x = test_x.to(F64)
    total = 0.0
    for k in range(order + 1):
        W, S = fit_autoregression(train_x, k)
        stop = None if k == order else k + 1
        inputs, targets = autoregression_inputs(test_x[:, :stop], k), test_x[:, k:stop]
        total += float(MultivariateNormal(inputs @ W, S).log_prob(targets).sum())
    return total / (test_x.shape[0] * test_x.shape[1])


def autoregression_rollout_mse(train_x: torch.Tensor, test_x: torch.Tensor, truth: torch.Tensor, order: int,
                               prefix_len: int) -> float:
    """Mean squared error against `truth` (B, H, P) of the fitted autoregression's mean rolled forward H steps
    from the first prefix_len frames of test_x."""
    W, _ = fit_autoregression(train_x, order)
    frames = list(test_x.to(F64)[:, :prefix_len].unbind(1))
    for _ in range(truth.shape[1]):
        inputs = torch.cat([*frames[:-order - 1:-1], torch.ones(len(test_x), 1, dtype=F64)], -1)
        frames.append(inputs @ W)
    return float(((torch.stack(frames[prefix_len:], 1) - truth.to(F64)) ** 2).mean())


def noise_ceiling(noise_sigma: float, pixels: int) -> float:
    """E log N(x | clean, sigma^2 I) per frame: no model of the noisy frames beats it on average, since
    E[-log p(x)] >= H(x) >= H(x | clean frame)."""
    return -0.5 * pixels * (math.log(2 * math.pi * noise_sigma ** 2) + 1)


def pinwheel_job_and_baseline(tmp_path) -> tuple[dict, dict, float]:
    """test.py's results for the shipped pinwheel job's best and last checkpoints, and the held-out NLL of the
    Gaussian fitted to the held-out points themselves (6.858 nats): a VAE whose latent carries nothing models a
    Gaussian, so no such VAE does better on these points."""
    config = load_and_check("configs/vae_pinwheel.yaml", [f"trainer.save_dir={tmp_path}", "trainer.verbosity=0"])
    checkpoints = train(config).run_dir / "checkpoints"
    best = jobs.evaluate(checkpoints / "model_best.pt", iw_samples=100, progress=False)
    final = jobs.evaluate(checkpoints / "last.pt", iw_samples=100, progress=False)
    baseline = best_gaussian_nll(build_data(config).test_set.tensors["x"])
    print(f"best Gaussian {baseline:.4f}; best (epoch {best['epoch']}) iw_nll {best['iw_nll']:.4f} elbo "
          f"{best['elbo']:.4f}; final iw_nll {final['iw_nll']:.4f} elbo {final['elbo']:.4f}")
    return best, final, baseline


@pytest.mark.slow
def test_default_pinwheel_job_learns_a_latent_code(tmp_path):
    """The checkpoint users evaluate (model_best.pt) uses its latent: its IW NLL beats the best Gaussian's."""
    best, _, baseline = pinwheel_job_and_baseline(tmp_path)
    assert best["iw_nll"] < baseline and best["iw_nll"] <= -best["elbo"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known defect of the shipped pinwheel job: once the KL warm-up ends "
                                       "(epoch 150) the latent collapses, and the final model's IW NLL (6.866) is "
                                       "no better than the best Gaussian's (6.858); remove this mark once fixed")
def test_default_pinwheel_job_keeps_its_latent_code_to_the_end(tmp_path):
    _, final, baseline = pinwheel_job_and_baseline(tmp_path)
    assert final["iw_nll"] < baseline, "the final model's latent carries nothing (posterior collapse)"


@pytest.fixture(scope="module")
def default_svae_gmm_run(tmp_path_factory) -> tuple[dict, dict]:
    """The README's main job, trained once for the tests below: (its config, test.py's results)."""
    save_dir = tmp_path_factory.mktemp("svae_gmm")
    config = load_and_check("configs/svae_gmm.yaml", [f"trainer.save_dir={save_dir}", "trainer.verbosity=0"])
    run = train(config)
    return config, jobs.evaluate(run.run_dir / "checkpoints" / "model_best.pt", progress=False)


@pytest.mark.slow
def test_default_svae_gmm_job_finds_the_five_arms(default_svae_gmm_run):
    """The README's main job: on the held-out points the most likely components agree with the 5 arms better than
    a 5-component Gaussian mixture fitted by EM in data space (ARI about 0.85: Gaussians cannot follow the
    curved arms, the SVAE's warped components can), 5 components are in use (the data's 5 arms), and the ELBO
    beats the log-likelihood of the Gaussian fitted to the held-out points themselves (-6.858 nats). Beside the
    mean, the median point and the worst one (issue 26; measured on seed 0: median -5.67, worst -35.9, where
    the Gaussian likelihood and the uniform mean-field start gave -5.18 and -204)."""
    config, results = default_svae_gmm_run
    data = build_data(config)
    train_x, (test_x, test_labels) = data.train_set.tensors["x"], (data.test_set.tensors[k] for k in ("x", "y"))
    log_weights, components = gaussian_mixture_em(train_x, num_components=5)
    em_labels = (components.log_prob(test_x.to(F64)[:, None]) + log_weights).argmax(-1)
    em_ari = adjusted_rand_index(test_labels, em_labels)
    baseline = best_gaussian_nll(test_x)
    print(f"ari {results['ari']:.4f} (EM mixture {em_ari:.4f}); components {results['components_in_use']}; "
          f"elbo {results['elbo']:.4f} (best Gaussian {-baseline:.4f}), median {results['elbo_median']:.4f}, "
          f"worst point {results['elbo_worst']:.2f}")
    assert results["ari"] > em_ari and results["components_in_use"] == 5
    assert results["elbo"] > -baseline
    assert results["elbo_median"] > -6.0 and results["elbo_worst"] > -100


@pytest.mark.slow
@pytest.mark.xfail(reason="open target of issue 26: over 5 seeds on two floating-point paths the worst held-out "
                          "point is >= -30 nats on 3 of 10 runs (seed 0: -35.9 and -45.3; README, Held-out tails)",
                   strict=False)
def test_default_svae_gmm_job_has_no_held_out_point_below_30_nats(default_svae_gmm_run):
    """Issue 26's target: no held-out pinwheel point costs more than 30 nats, and the mean ELBO is >= -6.0."""
    _, results = default_svae_gmm_run
    assert results["elbo_worst"] >= -30 and results["elbo"] >= -6.0, (results["elbo_worst"], results["elbo"])


@pytest.mark.slow
def test_default_svae_lds_job_learns_the_bounce(tmp_path):
    """The authors' dot video. The held-out ELBO per frame beats the exact log-likelihood of every linear-Gaussian
    autoregression of the frames of order 1 to 10 (the latent dimension) fitted to the training video (about
    15.6 nats at order 10; higher than the 14.4 the authors' code is said to reach) and stays below the
    pixel-noise ceiling (17.67 nats). Rolled forward from a prefix, the learned dynamics predict the noiseless
    frames better than repeating the last frame and than every one of those autoregressions' rollouts."""
    config = load_and_check("configs/svae_lds.yaml", [f"trainer.save_dir={tmp_path}", "trainer.verbosity=0"])
    run = train(config)
    results = jobs.evaluate(run.run_dir / "checkpoints" / "model_best.pt", progress=False)
    data = build_data(config)
    train_x, test_x = data.train_set.tensors["x"], data.test_set.tensors["x"]
    args, arch = config["data_loader"]["args"], config["arch"]["args"]
    prefix, horizon = arch["prefix_len"], arch["horizon"]
    truth = data.test_set.tensors["clean"][:, prefix:prefix + horizon]
    orders = range(1, arch["latent_dim"] + 1)
    linear_ll = max(autoregression_log_likelihood(train_x, test_x, k) for k in orders)
    linear_mse = min(autoregression_rollout_mse(train_x, test_x, truth, k, prefix) for k in orders)
    ceiling = noise_ceiling(args["noise_sigma"], args["image_width"])
    print(f"elbo {results['elbo']:.4f} (linear {linear_ll:.4f}, ceiling {ceiling:.4f}); pred_mse "
          f"{results['pred_mse']:.6f} (linear {linear_mse:.6f}, repeat last {results['pred_mse_repeat_last']:.6f})")
    assert linear_ll < results["elbo"] < ceiling
    assert results["pred_mse"] < min(linear_mse, results["pred_mse_repeat_last"])


@pytest.mark.slow
def test_default_recurrent_graph_vae_job_predicts_the_dot(tmp_path):
    """Dot sequences with random reversals, which the past does not predict. The held-out ELBO per step beats the
    exact log-likelihood of the same model with its latents removed (`RecurrentWithoutLatents`: a deterministic
    recurrent model of x_t given x_<t, same networks and optimizer), and the IW bound is the tighter one, both
    below the pixel-noise ceiling. Sampled continuations beat continuations sampled without looking at the prefix
    (noiseless training sequences at the same steps: MSE = (step mean - truth)^2 + step variance), and their mean
    beats that sampler's mean (the training mean of each step).

    The baseline trains for all 60 epochs: it still improves at the end (10.61 nats per step after 20 epochs,
    11.42 after 60), so fewer epochs would let a latent-free model trained as long as the job pass. It skips the
    unused latent paths: its 60 epochs take about 35 s, against about 3 minutes for the job."""
    overrides = [f"trainer.save_dir={tmp_path}", "trainer.verbosity=0"]
    config = load_and_check("configs/recurrent_graph_vae.yaml", overrides)
    run = train(config)
    results = jobs.evaluate(run.run_dir / "checkpoints" / "model_best.pt", progress=False)
    baseline_run = train(load_and_check("configs/recurrent_graph_vae.yaml", [
        *overrides, "arch.type=RecurrentWithoutLatents", "metrics=[elbo]", "trainer.tensorboard=false"]))
    without_latents = jobs.evaluate(baseline_run.run_dir / "checkpoints" / "model_best.pt", progress=False)

    data = build_data(config)
    args, arch = config["data_loader"]["args"], config["arch"]["args"]
    prefix, horizon = arch["prefix_len"], arch["horizon"]
    truth = data.test_set.tensors["clean"][:, prefix:prefix + horizon].to(F64)
    train_clean = data.train_set.tensors["clean"][:, prefix:prefix + horizon].to(F64)
    step_mean, step_var = train_clean.mean(0), train_clean.var(0, correction=0)
    blind_mean_mse = float(((step_mean - truth) ** 2).mean())
    blind_sample_mse = float(((step_mean - truth) ** 2 + step_var).mean())
    ceiling = noise_ceiling(args["noise_sigma"], args["image_width"])
    print(f"elbo/frame {results['elbo']:.4f} (without latents {without_latents['elbo']:.4f}, "
          f"ceiling {ceiling:.4f}); -iw_nll/frame {-results['iw_nll']:.4f}; pred_mse_per_sample "
          f"{results['pred_mse_per_sample']:.4f} (blind sampler {blind_sample_mse:.4f}, repeat last "
          f"{results['pred_mse_repeat_last']:.4f}); pred_mse {results['pred_mse']:.4f} (blind mean "
          f"{blind_mean_mse:.4f}); kl_nodes {results['kl_nodes']}")
    # by at least 1 nat per step (the gap is about 4): the same model with z zeroed ties the baseline to 0.002 nats
    assert without_latents["elbo"] + 1.0 < results["elbo"] <= -results["iw_nll"] < ceiling
    assert results["pred_mse_per_sample"] < min(blind_sample_mse, results["pred_mse_repeat_last"])
    assert results["pred_mse"] < blind_mean_mse


def kmeans_labels(points: torch.Tensor, num_clusters: int, restarts: int = 10, iterations: int = 100,
                  seed: int = 0) -> torch.Tensor:
    """Lloyd's K-means on points (N, D), the best of `restarts` starts from random points: labels (N,)."""
    gen = torch.Generator().manual_seed(seed)
    x = points.to(F64)
    best, best_cost = None, math.inf
    for _ in range(restarts):
        centres = x[torch.randperm(len(x), generator=gen)[:num_clusters]]
        for _ in range(iterations):
            labels = torch.cdist(x, centres).argmin(-1)
            centres = torch.stack([x[labels == k].mean(0) if (labels == k).any() else centres[k]
                                   for k in range(num_clusters)])
        cost = float(torch.cdist(x, centres).min(-1).values.pow(2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def trained_model(checkpoint) -> tuple:
    """The data and the model of a checkpoint, rebuilt as test.py does: (data loader, model in eval mode)."""
    state = load_checkpoint(checkpoint)
    config = load_and_check(base=state["config"])
    data = build_data(config)
    model = build_model(config, data)
    load_model_weights(model, state)
    return data, model.eval()


@pytest.mark.slow
def test_default_svae_slds_job_segments_the_speed_regimes(tmp_path):
    """Switching dots. The most likely state per held-out frame agrees with the true speed regimes better than
    K-means (K = the number of regimes) of the speed in the learned latent, ||mu_t+1 - mu_t|| of the trained
    recognition network's per-frame means (ARI about 0.4-0.6; of [mu_t, mu_t+1 - mu_t], about 0), and
    SVAE-LDS trained on the same data (configs/svae_lds_switching.yaml) has a lower held-out ELBO and predicts
    worse (both: pred_mse of the Monte Carlo predictive mean)."""
    overrides = [f"trainer.save_dir={tmp_path}", "trainer.verbosity=0"]
    run = train(load_and_check("configs/svae_slds.yaml", overrides))
    checkpoint = run.run_dir / "checkpoints" / "model_best.pt"
    results = jobs.evaluate(checkpoint, progress=False)
    data, model = trained_model(checkpoint)
    test = data.test_set.tensors
    with torch.no_grad():
        node_J, node_h = model.encoder(test["x"])
    means = node_h / node_J
    features = (means[:, 1:] - means[:, :-1]).norm(dim=-1, keepdim=True).flatten(0, 1)
    baseline = adjusted_rand_index(test["labels"][:, :-1].flatten(), kmeans_labels(features, data.num_states))
    lds_checkpoint = train(load_and_check("configs/svae_lds_switching.yaml", overrides)).run_dir / "checkpoints"
    lds = jobs.evaluate(lds_checkpoint / "model_best.pt", progress=False)
    print(f"state_ari {results['state_ari']:.4f} (K-means of the latent speed {baseline:.4f}); "
          f"elbo {results['elbo']:.4f} (SVAE-LDS {lds['elbo']:.4f}); pred_mse {results['pred_mse']:.6f} "
          f"(SVAE-LDS {lds['pred_mse']:.6f}; repeat last {results['pred_mse_repeat_last']:.6f})")
    assert results["state_ari"] > baseline + 0.1
    assert results["elbo"] > lds["elbo"]
    assert results["pred_mse"] < min(lds["pred_mse"], results["pred_mse_repeat_last"])
