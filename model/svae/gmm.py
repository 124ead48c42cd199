"""SVAE-GMM: a Gaussian mixture over the latents, a recognition network that outputs Gaussian node
potentials, and a diagonal-Gaussian decoder (SVAE.md sections 2, 3 and 5)."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch

from base.base_model import BaseModel
from model.expfam import dirichlet, niw
from model.expfam.gaussian import sample as gaussian_sample
from model.expfam.psd import jitter_retries
from model.kl_warmup import KLWarmup
from model.likelihoods import GaussianLikelihood
from model.metrics import adjusted_rand_index, normalized_mutual_info
from model.networks import GaussianResNet
from model.registry import ARCHITECTURES
from model.svae.gmm_inference import LocalPosterior, MixtureExpectations, local_meanfield, mixture_expectations
from model.svae.recognition import GaussianRecognition
from model.svae.svi import NaturalGradientSVI
from model.visualization import log_gmm_clusters
from utils.errors import DataError

IN_USE_THRESHOLD = 0.05  # a component is "in use" when its mean responsibility exceeds this


@ARCHITECTURES.register("SVAE-GMM")
class SVAEGMM(KLWarmup, BaseModel):
    """Structured VAE with a K-component Gaussian mixture over d-dimensional latents.

    Globals: q(pi) Dirichlet and q(mu_k, Sigma_k) NIW, in natural parameters (float64 buffers),
    updated by natural-gradient SVI in `after_optimizer_step` (never by the network optimizer).
    Networks (point estimates, trained by the optimizer on -ELBO): recognition y -> psi(x) and
    decoder x -> N(y | mean, diag var). Batches: {"x": (B, P)} (and "y": (B,) labels for ARI/NMI).

    ELBO per point = mean_batch[E_q log p(y | x) - KL_local] - KL(q(theta) || p(theta)) / N.

    Args:
        data_shape, num_train: set by the framework (P = prod(data_shape); N = training set size).
        num_components: K.
        latent_dim: d.
        hidden_dims, activation, init_scale: encoder and decoder GaussianResNets.
        min_precision, max_precision: bounds of the recognition precisions.
        num_samples: S, samples of x per point for the reconstruction term in training.
        eval_samples: S used by test.py for the held-out ELBO.
        max_iter, tol: mean-field iterations (without gradient) and tolerance on the local KL.
        rho: SVI step size of the globals.
        prior_alpha: Dirichlet concentration of the prior on pi.
        prior_kappa, prior_nu_offset: NIW prior m = 0, kappa, nu = d + offset, S = nu I.
        init_mean_scale: initial q(theta) component means m_k ~ init_mean_scale * N(0, I) (spread out,
            or all points collapse into one cluster).
        kl_warmup_epochs: the local KL's weight in the training loss rises linearly from 0 to 1 over this
            many epochs (0: always 1), so that the networks learn a latent code before the mixture shapes
            it; `elbo` is always the true bound.
        decoder_variance: "shared": one learned variance per observed dim; "conditional": the decoder
            network outputs it for every x (log-variance bounded to (-10, 10) either way).
    """

    eval_metrics = ("elbo", "ari", "nmi", "components_in_use")
    visualization_size = 500

    def __init__(self, data_shape: tuple[int, ...], num_train: int, num_components: int = 15, latent_dim: int = 2,
                 hidden_dims: list[int] = (40, 40), activation: str = "tanh", init_scale: float = 1e-2,
                 min_precision: float = 1e-4, max_precision: float = 1e4, num_samples: int = 1,
                 eval_samples: int = 10, max_iter: int = 100, tol: float = 1e-3, rho: float = 0.02,
                 prior_alpha: float = 1.0, prior_kappa: float = 0.5, prior_nu_offset: float = 0.5,
                 init_mean_scale: float = 3.0, kl_warmup_epochs: int = 0,
                 decoder_variance: Literal["conditional", "shared"] = "shared"):
        super().__init__()
        for name, value in [("num_components", num_components), ("latent_dim", latent_dim),
                            ("num_samples", num_samples), ("eval_samples", eval_samples), ("max_iter", max_iter)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in [("prior_alpha", prior_alpha), ("prior_kappa", prior_kappa), ("tol", tol)]:
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if prior_nu_offset <= -1:
            raise ValueError(f"prior_nu_offset must be > -1 (nu > d - 1), got {prior_nu_offset}")
        self.data_shape = tuple(data_shape)
        obs_dim = math.prod(self.data_shape)
        self.num_train = num_train
        self.latent_dim = latent_dim
        self.num_samples, self.eval_samples = num_samples, eval_samples
        self.max_iter, self.tol = max_iter, tol
        self.encoder = GaussianRecognition(obs_dim, latent_dim, list(hidden_dims), activation, init_scale,
                                           min_precision, max_precision)
        self.decoder = GaussianResNet(latent_dim, list(hidden_dims), obs_dim, activation, init_scale)
        self.likelihood = GaussianLikelihood
        self.svi = NaturalGradientSVI(num_train, rho)
        self.init_kl_warmup(kl_warmup_epochs)
        if decoder_variance not in ("conditional", "shared"):
            raise ValueError(f"decoder_variance must be 'conditional' or 'shared', got {decoder_variance!r}")
        shared = torch.nn.Parameter(torch.zeros(obs_dim)) if decoder_variance == "shared" else None
        self.register_parameter("decoder_log_variance", shared)

        K, d, f64 = num_components, latent_dim, torch.float64
        nu = torch.full((K,), d + prior_nu_offset, dtype=f64)
        scale = nu[:, None, None] * torch.eye(d, dtype=f64)
        kappa = torch.full((K,), prior_kappa, dtype=f64)
        prior = niw.standard_to_natural(torch.zeros(K, d, dtype=f64), kappa, scale, nu)
        init = niw.standard_to_natural(init_mean_scale * torch.randn(K, d, dtype=f64), kappa, scale, nu)
        prior_dirichlet = dirichlet.alpha_to_natural(torch.full((K,), prior_alpha, dtype=f64))
        self.register_buffer("prior_dirichlet", prior_dirichlet)
        self.register_buffer("q_dirichlet", prior_dirichlet.clone())
        for field, p, q in zip(niw.NIWNatural._fields, prior, init):  # clones: q is updated in place
            self.register_buffer(f"prior_niw_{field}", p.clone())
            self.register_buffer(f"q_niw_{field}", q.clone())

    # ---------------------------------------------------------------- globals
    @property
    def q_niw(self) -> niw.NIWNatural:
        return niw.NIWNatural(*(getattr(self, f"q_niw_{f}") for f in niw.NIWNatural._fields))

    @property
    def prior_niw(self) -> niw.NIWNatural:
        return niw.NIWNatural(*(getattr(self, f"prior_niw_{f}") for f in niw.NIWNatural._fields))

    def global_expectations(self) -> tuple[MixtureExpectations, torch.Tensor]:
        """What local inference needs of q(theta), and KL(q(theta) || p(theta)) (scalar, nats): the
        Dirichlet's and the K NIWs', sharing the NIWs' expected statistics."""
        niw_expected = niw.expected_stats(self.q_niw)
        kl = (dirichlet.kl(self.q_dirichlet, self.prior_dirichlet)
              + niw.kl(self.q_niw, self.prior_niw, niw_expected).sum())
        return mixture_expectations(self.q_dirichlet, niw_expected), kl

    def after_optimizer_step(self) -> None:
        self.svi.step([self.q_dirichlet, *self.q_niw], [self.prior_dirichlet, *self.prior_niw])

    def on_step_skipped(self) -> None:
        self.svi.clear()

    # ---------------------------------------------------------------- inference
    def infer(self, y: torch.Tensor, mix: MixtureExpectations | None = None) -> tuple[LocalPosterior, int]:
        """Local mean-field posterior q(z) q(x) of a batch y (B, P), and the sweeps it took."""
        node_J, node_h = self.encoder(y)
        if mix is None:
            mix, _ = self.global_expectations()
        with torch.autocast(y.device.type, enabled=False):
            return local_meanfield(node_J, node_h, mix, self.max_iter, self.tol)

    def reconstruction(self, y: torch.Tensor, post: LocalPosterior, num_samples: int) -> torch.Tensor:
        """E_q(x)[log p(y | x)] estimated with S reparameterised samples: (B,)."""
        x = gaussian_sample(post.chol, post.mean, num_samples).to(y.dtype)  # (S, B, d)
        return self.likelihood.log_prob(self.decode(x), y).mean(0)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., 2P): the mean and the raw log-variance of p(y | x)."""
        mean, raw = self.decoder(x)
        if self.decoder_log_variance is not None:
            raw = self.decoder_log_variance.expand_as(raw)
        return torch.cat([mean, raw], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = batch["x"].flatten(1)
        retries = jitter_retries()
        mix, kl_global = self.global_expectations()
        kl_global = kl_global / self.num_train
        post, iterations = self.infer(y, mix)
        recon = self.reconstruction(y, post, self.num_samples)
        elbo = (recon - post.kl).mean() - kl_global
        loss = -(recon - self.kl_weight * post.kl).mean() + kl_global if self.training else -elbo
        r = post.responsibilities
        if self.training:
            weights = r.detach()
            self.svi.accumulate([weights.sum(0), *niw.weighted_gaussian_stats(weights, post.second.detach(),
                                                                             post.mean.detach())], len(y))
        return {
            "loss": loss,
            "elbo": elbo.detach(),
            "recon": recon.detach().mean(),
            "kl_local": post.kl.detach().mean(),
            "kl_global": kl_global.detach(),
            "components_in_use": (r.detach().mean(0) > IN_USE_THRESHOLD).sum().double(),
            "meanfield_iters": torch.tensor(float(iterations)),
            "jitter_retries": torch.tensor(float(jitter_retries() - retries)),
        }

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       iw_samples: int) -> dict[str, torch.Tensor]:
        """Per point: the local ELBO (B,), responsibilities (B, K) and the true labels (B,)."""
        y = batch["x"].flatten(1)
        post, _ = self.infer(y)
        out = {"responsibilities": post.responsibilities}
        if "elbo" in metrics:
            out["local_elbo"] = self.reconstruction(y, post, self.eval_samples) - post.kl
        if "ari" in metrics or "nmi" in metrics:
            if "y" not in batch:
                raise DataError("metrics ari and nmi need true labels, but the data loader's batches have no 'y'; "
                                "drop them from the config's `metrics`")
            out["labels"] = batch["y"]
        return out

    def summarize_evaluation(self, per_example: dict[str, torch.Tensor]) -> dict[str, Any]:
        """elbo = mean local ELBO - KL(q(theta) || p(theta)) / N_train (nats per point); ari and nmi
        of the most likely component against the labels; components with mean responsibility > 0.05."""
        r = per_example["responsibilities"]
        results: dict[str, Any] = {}
        if "local_elbo" in per_example:
            kl_global = float(self.global_expectations()[1]) / self.num_train
            results["elbo"] = float(per_example["local_elbo"].double().mean()) - kl_global
            results["kl_global"] = kl_global
        if "labels" in per_example:
            assignments = r.argmax(-1)
            results["ari"] = adjusted_rand_index(per_example["labels"], assignments)
            results["nmi"] = normalized_mutual_info(per_example["labels"], assignments)
        results["components_in_use"] = int((r.double().mean(0) > IN_USE_THRESHOLD).sum())
        return results

    # ---------------------------------------------------------------- figures
    def component_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E[pi] (K,), the component means m_k (K, d) and the expected covariances E[Sigma_k] (K, d, d)."""
        alpha = dirichlet.natural_to_alpha(self.q_dirichlet)
        m, _, S, nu = niw.natural_to_standard(self.q_niw)
        d = self.latent_dim
        cov = S / (nu - d - 1).clamp_min(1.0)[:, None, None]
        return alpha / alpha.sum(), m, cov

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        if self.latent_dim != 2 or self.data_shape != (2,):
            return
        y = batch["x"].flatten(1)
        post, _ = self.infer(y)
        weights, means, covs = self.component_moments()

        def decode(x: torch.Tensor) -> torch.Tensor:
            return self.likelihood.mean(self.decode(x.to(y.dtype)))

        log_gmm_clusters(writer, f"{tag}/clusters", step, latent=post.mean, data=y,
                         assignments=post.responsibilities.argmax(-1), weights=weights, means=means, covs=covs,
                         decode=decode)
