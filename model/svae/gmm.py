"""SVAE-GMM: a Gaussian mixture over the latents, a recognition network that outputs Gaussian node
potentials, and a diagonal-Gaussian decoder (SVAE.md sections 2, 3 and 5)."""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch

from base.metric import Metric, PerExample
from model.expfam import dirichlet, niw
from model.expfam.niw import NIWNatural
from model.likelihoods import StudentTLikelihood
from model.metrics import adjusted_rand_index, normalized_mutual_info
from model.networks import GaussianResNet
from model.registry import ARCHITECTURES
from model.svae.figures import log_gmm_clusters
from model.svae.gmm_inference import MeanFieldPosterior, MixtureExpectations, local_meanfield, mixture_expectations
from model.svae.graphical_model import DIRICHLET, NIW, GraphicalModel
from model.svae.recognition import GaussianRecognition
from model.svae.structured_vae import StructuredVAE
from utils.errors import DataError

IN_USE_THRESHOLD = 0.05  # a component is "in use" when its mean responsibility exceeds this


class MixtureStatistics(NamedTuple):
    """The mixture's statistics: responsibilities summed (K,), the components' NIW (batch K), the points."""
    dirichlet: torch.Tensor
    niw: NIWNatural
    count: torch.Tensor


class GaussianMixture(GraphicalModel):
    """pi ~ Dir; (mu_k, Sigma_k) ~ NIW, k = 1..K; z ~ Cat(pi); x | z ~ N(mu_z, Sigma_z): one n-dimensional
    latent per example. Global factors "dirichlet" (K,) and "niw" (batch K); local inference by mean field
    q(z) q(x) (`gmm_inference.py`), whose posterior is a `MeanFieldPosterior`.

    Args:
        num_components: K.
        latent_dim: n.
        max_iter, tol: mean-field sweeps without gradient, and the tolerance on the batch-mean local KL.
        prior_alpha: Dirichlet concentration of the prior on pi.
        prior_kappa, prior_nu_offset: NIW prior m = 0, kappa, nu = n + offset, Psi = nu I.
        init_mean_scale: q(theta) starts with component means m_k ~ init_mean_scale * N(0, I).
    """

    Statistics = MixtureStatistics

    def __init__(self, num_components: int, latent_dim: int, max_iter: int, tol: float, prior_alpha: float,
                 prior_kappa: float, prior_nu_offset: float, init_mean_scale: float):
        super().__init__()
        self.latent_dim, self.max_iter, self.tol = latent_dim, max_iter, tol
        K, n, f64 = num_components, latent_dim, torch.float64
        nu = torch.full((K,), n + prior_nu_offset, dtype=f64)
        scale = nu[:, None, None] * torch.eye(n, dtype=f64)
        kappa = torch.full((K,), prior_kappa, dtype=f64)
        prior = niw.standard_to_natural(torch.zeros(K, n, dtype=f64), kappa, scale, nu)
        init = niw.standard_to_natural(init_mean_scale * torch.randn(K, n, dtype=f64), kappa, scale, nu)
        self.add_global_factor("dirichlet", DIRICHLET, dirichlet.alpha_to_natural(torch.full((K,), prior_alpha,
                                                                                                dtype=f64)))
        self.add_global_factor("niw", NIW, prior, init)

    def potentials(self, stats: dict[str, Any]) -> MixtureExpectations:
        return mixture_expectations(stats["dirichlet"], stats["niw"])

    def infer(self, potentials: MixtureExpectations, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: None = None) -> MeanFieldPosterior:
        """Mean field q(z) q(x) of each example's one latent (no nodes, so no `mask`)."""
        post = local_meanfield(node_J, node_h, potentials, self.max_iter, self.tol)
        return post._replace(samples=post.gaussian.sample(num_samples, post.mean) if num_samples else None)

    def statistics(self, post: MeanFieldPosterior) -> MixtureStatistics:
        """Dirichlet: sum_b r_b; NIW_k: sum_b r_bk (E x x^T, E x, 1, 1)."""
        weights = post.responsibilities.detach()
        components = niw.weighted_gaussian_stats(weights, post.second.detach(), post.mean.detach())
        return MixtureStatistics(weights.sum(0), components, weights.new_tensor(float(len(weights))))

    def posterior_log_prob(self, post: MeanFieldPosterior, x: torch.Tensor) -> torch.Tensor:
        return post.gaussian.log_prob(x)

    def prior_log_prob(self, potentials: MixtureExpectations, x: torch.Tensor, mask: None = None) -> torch.Tensor:
        """log sum_k pi_k N(x | mu_k, Sigma_k) for x (S, B, n): (S, B)."""
        quadratic = torch.einsum("sbi,kij,sbj->sbk", x, potentials.J, x)
        logits = -0.5 * quadratic + x @ potentials.h.mT + potentials.const + potentials.log_weights
        return torch.logsumexp(logits, -1)

    def diagnostics(self, post: MeanFieldPosterior) -> dict[str, torch.Tensor]:
        in_use = (post.responsibilities.detach().mean(0) > IN_USE_THRESHOLD).sum().double()
        return {"components_in_use": in_use, "meanfield_iters": post.iterations.float()}

    def component_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E[pi] (K,), the component means m_k (K, n) and the expected covariances E[Sigma_k] (K, n, n)."""
        alpha = dirichlet.natural_to_alpha(self.natural("dirichlet"))
        m, _, Psi, nu = niw.natural_to_standard(self.natural("niw"))
        cov = Psi / (nu - self.latent_dim - 1).clamp_min(1.0)[:, None, None]
        return alpha / alpha.sum(), m, cov


def _clustering(score: Any) -> Any:
    """Reduction: `score`(true labels, most likely component) over the test set."""
    return lambda per_example: score(per_example["labels"], per_example["responsibilities"].argmax(-1))


def _components_in_use(per_example: PerExample) -> int:
    return int((per_example["responsibilities"].double().mean(0) > IN_USE_THRESHOLD).sum())


@ARCHITECTURES.register("SVAE-GMM")
class SVAEGMM(StructuredVAE):
    """Structured VAE with a K-component Gaussian mixture over n-dimensional latents (`GaussianMixture`).

    Networks (point estimates, trained by the optimizer on -ELBO): recognition y -> psi(x) and decoder
    x -> N(y | mean, diag var). Batches: {"x": (B, *data_shape)}, flattened to (B, D) (and "y": (B,)
    labels for ARI/NMI). ELBO per point = mean_batch[E_q log p(y | x) - KL_local] - KL(q(theta) || p(theta)) / N.

    Args:
        data_shape, num_train: set by the framework (D = prod(data_shape); N = training set size).
        num_components: K.
        latent_dim: n.
        hidden_dims, activation, init_scale: encoder and decoder GaussianResNets.
        min_precision, max_precision: bounds of the recognition precisions.
        num_samples: S, samples of x per point for the reconstruction term in training.
        eval_samples: S used by test.py for the held-out ELBO.
        max_iter, tol: mean-field iterations (without gradient) and tolerance on the local KL.
        rho: SVI step size of the globals.
        prior_alpha: Dirichlet concentration of the prior on pi.
        prior_kappa, prior_nu_offset: NIW prior m = 0, kappa, nu = n + offset, Psi = nu I.
        init_mean_scale: initial q(theta) component means m_k ~ init_mean_scale * N(0, I) (spread out,
            or all points collapse into one cluster).
        kl_warmup_epochs: the local KL's weight in the training loss rises linearly from 0 to 1 over this
            many epochs (0: always 1), so that the networks learn a latent code before the mixture shapes
            it; `elbo` is always the true bound.
        decoder_variance: "shared": one learned variance per observed dim; "conditional": the decoder
            network outputs it for every x (log-variance bounded to (-10, 10) either way).
        likelihood: p(y | x), "gaussian" N(y | mean, diag var), or "student_t": an independent Student-t per
            dim with `likelihood_df` degrees of freedom, location and squared scale in place of mean and variance,
            so that a held-out point the decoder misses costs tens of nats, not hundreds (issue 26).
        likelihood_df: the Student-t's degrees of freedom (> 0).
    """

    metrics = StructuredVAE.metrics + (
        Metric("ari", _clustering(adjusted_rand_index),
               "adjusted Rand index of the most likely component against the true labels", needs=("y",)),
        Metric("nmi", _clustering(normalized_mutual_info),
               "normalised mutual information of the most likely component and the true labels", needs=("y",)),
        Metric("components_in_use", _components_in_use,
               f"components whose mean responsibility over the test set exceeds {IN_USE_THRESHOLD}"),
    )
    visualization_size = 500

    def __init__(self, data_shape: tuple[int, ...], num_train: int, num_components: int = 15, latent_dim: int = 2,
                 hidden_dims: list[int] = (40, 40), activation: str = "tanh", init_scale: float = 1e-2,
                 min_precision: float = 1e-4, max_precision: float = 1e4, num_samples: int = 1,
                 eval_samples: int = 10, max_iter: int = 100, tol: float = 1e-3, rho: float = 0.02,
                 prior_alpha: float = 1.0, prior_kappa: float = 0.5, prior_nu_offset: float = 0.5,
                 init_mean_scale: float = 3.0, kl_warmup_epochs: int = 0,
                 decoder_variance: Literal["conditional", "shared"] = "shared",
                 likelihood: Literal["gaussian", "student_t"] = "gaussian", likelihood_df: float = 3.0):
        for name, value in [("num_components", num_components), ("latent_dim", latent_dim), ("max_iter", max_iter)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in [("prior_alpha", prior_alpha), ("prior_kappa", prior_kappa), ("tol", tol)]:
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if prior_nu_offset <= -1:
            raise ValueError(f"prior_nu_offset must be > -1 (nu > n - 1), got {prior_nu_offset}")
        if decoder_variance not in ("conditional", "shared"):
            raise ValueError(f"decoder_variance must be 'conditional' or 'shared', got {decoder_variance!r}")
        if likelihood not in ("gaussian", "student_t"):
            raise ValueError(f"likelihood must be 'gaussian' or 'student_t', got {likelihood!r}")
        obs_dim = math.prod(data_shape)
        encoder = GaussianRecognition(obs_dim, latent_dim, list(hidden_dims), activation, init_scale,
                                      min_precision, max_precision)
        decoder = GaussianResNet(latent_dim, list(hidden_dims), obs_dim, activation, init_scale)
        pgm = GaussianMixture(num_components, latent_dim, max_iter, tol, prior_alpha, prior_kappa, prior_nu_offset,
                              init_mean_scale)
        super().__init__(pgm, encoder, decoder, num_train, frames_per_example=1, rho=rho, num_samples=num_samples,
                         eval_samples=eval_samples, kl_warmup_epochs=kl_warmup_epochs)
        self.data_shape = tuple(data_shape)
        self.unit = "image" if len(self.data_shape) == 3 else "point"
        self.latent_dim = latent_dim
        shared = torch.nn.Parameter(torch.zeros(obs_dim)) if decoder_variance == "shared" else None
        self.register_parameter("decoder_log_variance", shared)
        if likelihood == "student_t":
            self.likelihood = StudentTLikelihood(likelihood_df)

    def observations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["x"].flatten(1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., 2D): the mean and the raw log-variance of p(y | x)."""
        mean, raw = self.decoder(x)
        if self.decoder_log_variance is not None:
            raw = self.decoder_log_variance.expand_as(raw)
        return torch.cat([mean, raw], -1)

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: MeanFieldPosterior,
                      metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Responsibilities (B, K) and, for ari and nmi, the true labels (B,)."""
        out = {"responsibilities": post.responsibilities}
        if "ari" in metrics or "nmi" in metrics:
            if "y" not in batch:
                raise DataError("metrics ari and nmi need true labels, but the data loader's batches have no 'y'; "
                                "drop them from the config's `metrics`")
            out["labels"] = batch["y"]
        return out

    # ---------------------------------------------------------------- figures
    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """2-D latents only: `{tag}/clusters_latent` (latent means by component, 2-sigma ellipses) and, for 2-D
        data, `{tag}/clusters_data` (the data in the same colours, decoded ellipses)."""
        if self.latent_dim != 2:
            return
        y = self.observations(batch)
        post = self.infer(y, self.expected_globals().potentials, 0)
        weights, means, covs = self.pgm.component_moments()

        def decode(x: torch.Tensor) -> torch.Tensor:
            return self.likelihood.mean(self.decode(x.to(y.dtype)))

        log_gmm_clusters(writer, tag, step, latent=post.mean, data=y if self.data_shape == (2,) else None,
                         assignments=post.responsibilities.argmax(-1), weights=weights, means=means, covs=covs,
                         decode=decode)
