"""StructuredVAE: recognition network -> graphical model -> decoder (SVAE.md section 2).

The objective, its logged parts, the natural-gradient step of the globals and the shared test metrics
(ELBO, importance-weighted NLL) for any `GraphicalModel`. An architecture subclasses it, builds its
networks and its graphical model, and says how a batch becomes observations and how latents decode.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from base.base_model import BaseModel
from base.metric import Metric, PerExample, ratio_of_sums, ratio_with_spread
from model.importance import iw_log_likelihood
from model.kl_warmup import KLWarmup
from model.likelihoods import GaussianLikelihood
from model.svae.graphical_model import GraphicalModel, LocalPosterior
from model.svae.recognition import GaussianRecognition
from utils.tree import map_tensors


class ExpectedGlobals(NamedTuple):
    """What the globals q(theta) give a step: the graphical model's potentials and KL(q(theta) || p(theta))."""
    potentials: Any
    kl: torch.Tensor


class StructuredVAE(KLWarmup, BaseModel):
    """Structured VAE over a graphical model `pgm`.

    Observations y (B, *nodes, D) (`observations(batch)`); the encoder gives one Gaussian node potential
    per latent node (B, *nodes, n); the graphical model infers q(local latents); the decoder maps latents
    x (..., n) to the parameters of p(y | x) (`decode`, a GaussianLikelihood). With F = prod(nodes)
    frames per example (1 without nodes) and N training examples:

        ELBO per frame = mean_batch[E_q log p(y | x) - KL_local] / F - KL(q(theta) || p(theta)) / (N F)

    The training loss weighs KL_local (`training_kl`: a tempered objective's) by the KL warm-up weight.
    Encoder and decoder are trained by the optimizer; the globals by `after_optimizer_step`, from the
    statistics `forward` returns.

    Args:
        pgm: the graphical model (owns the global factors).
        encoder: y (..., D) -> diagonal node potentials (J, h) (..., n), float64.
        decoder: x (..., n) -> (mean, raw log-variance) (..., D) each.
        num_train: N.
        frames_per_example: F of a training example (the global KL is shared over N F frames).
        rho: SVI step size of the globals, in (0, 1].
        num_samples: S, samples of the local latents per example for the reconstruction term in training.
        eval_samples: S for the held-out ELBO in test.py.
        kl_warmup_epochs: the local KL's weight in the training loss rises from 0 to 1 over this many epochs.
    """

    diagnostics = ("jitter_retries",)
    metrics = (
        Metric("elbo", ratio_with_spread("elbo", "frames"),
               "held-out ELBO, nats per data point (per frame for sequences), with q(theta)'s KL shared "
               "over the training set; elbo_median and elbo_worst: the median and the smallest per example"),
        Metric("iw_nll", ratio_of_sums("iw_nll", "frames"),
               "importance-weighted -log p(y), nats per data point (per frame), globals at their "
               "posterior mean, q as the proposal, discrete latents summed out"),
    )

    def __init__(self, pgm: GraphicalModel, encoder: GaussianRecognition, decoder: nn.Module, num_train: int,
                 frames_per_example: int, rho: float, num_samples: int, eval_samples: int,
                 kl_warmup_epochs: int = 0):
        super().__init__()
        for name, value in [("num_samples", num_samples), ("eval_samples", eval_samples), ("num_train", num_train)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        self.encoder, self.pgm, self.decoder = encoder, pgm, decoder
        self.likelihood = GaussianLikelihood
        self.num_train, self.frames_per_example, self.rho = num_train, frames_per_example, rho
        self.num_samples, self.eval_samples = num_samples, eval_samples
        self.init_kl_warmup(kl_warmup_epochs)
        self._register_load_state_dict_pre_hook(_globals_into_pgm, with_module=True)

    # ---------------------------------------------------------------- per architecture
    def observations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The observations y (B, *nodes, D) of a batch."""
        return batch["x"]

    def observed_nodes(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Which nodes of each example are observed, (B, *nodes) bool, or None when all are."""
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Parameters of p(y | x) (..., 2D) for latents x (..., n)."""
        mean, raw = self.decoder(x)
        return torch.cat([mean, raw], -1)

    # ---------------------------------------------------------------- inference
    def expected_globals(self) -> ExpectedGlobals:
        """The graphical model's potentials under q(theta), and KL(q(theta) || p(theta)) (scalar, nats): both
        come from the same expected statistics."""
        expected = self.pgm.global_stats()
        return ExpectedGlobals(self.pgm.potentials(expected), self.pgm.global_kl(expected))

    def infer(self, y: torch.Tensor, potentials: Any, num_samples: int,
              mask: torch.Tensor | None = None) -> LocalPosterior:
        """q(local latents) of observations y (B, *nodes, D). Nodes outside `mask` (B, *nodes) carry no node
        potential (the graphical model also ends each chain at its last observed node)."""
        node_J, node_h = self.encoder(y)
        if mask is not None:
            seen = mask.to(node_J.dtype)[..., None]
            node_J, node_h = node_J * seen, node_h * seen
        with torch.autocast(y.device.type, enabled=False):
            return self.pgm.infer(potentials, node_J, node_h, num_samples, mask)

    def log_likelihood(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y | x) summed over the observed frames (`mask` (B, *nodes); None: all), for S latent paths x
        (S, B, *nodes, n): (S, B)."""
        log_p = self.likelihood.log_prob(self.decode(x.to(y.dtype)), y)  # (S, B, *nodes)
        if mask is not None:
            log_p = log_p * mask
        return log_p.reshape(*x.shape[:2], -1).sum(-1)

    def frames(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The observed frames of each example (B,) float64: prod(nodes) (1 without nodes), or `mask`'s count."""
        if mask is None:
            return torch.full((len(y),), math.prod(y.shape[1:-1]), dtype=torch.float64, device=y.device)
        return mask.reshape(len(y), -1).sum(-1, dtype=torch.float64)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per observed frame of the batch: the ELBO and its parts, and the training loss. Each example's
        terms per frame are weighted by its share of the batch's frames (1 when all examples have as many), so
        that every observed frame counts once."""
        y, mask = self.observations(batch), self.observed_nodes(batch)
        potentials, kl_global = self.expected_globals()
        kl_global = kl_global / (self.num_train * self.frames_per_example)
        post = self.infer(y, potentials, self.num_samples, mask)
        log_likelihood = self.log_likelihood(y, post.samples, mask).mean(0)  # (B,)
        frames = self.frames(y, mask).to(log_likelihood.dtype)
        weights = frames / frames.mean()
        recon = log_likelihood / frames * weights
        kl_local = post.kl / frames * weights
        elbo = (recon - kl_local).mean() - kl_global
        if self.training:
            loss = -(recon - self.kl_weight * self.training_kl(post) / frames * weights).mean() + kl_global
        else:
            loss = -elbo
        out = {
            "loss": loss,
            "elbo": elbo.detach(),
            "recon": recon.detach().mean(),
            "kl_local": kl_local.detach().mean(),
            "kl_global": kl_global.detach(),
            **self.pgm.diagnostics(post),
            "jitter_retries": post.retries.double(),
        }
        if self.training:
            out["statistics"] = map_tensors(lambda v: v.detach().unsqueeze(0), self.pgm.statistics(post))
        return out

    def training_kl(self, post: LocalPosterior) -> torch.Tensor:
        """The local KL term of the training loss (B,): KL(q || p) (a tempered model's objective: SVAE-SLDS)."""
        return post.kl

    def after_optimizer_step(self, statistics: NamedTuple | None,
                             taken: torch.Tensor | None = None) -> None:
        if statistics is not None:
            self.pgm.natural_gradient_step(statistics, self.num_train, self.rho, taken)

    # ---------------------------------------------------------------- evaluation
    def iw_log_likelihood(self, y: torch.Tensor, num_samples: int, potentials: Any,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
        """Importance-weighted estimate of log p(y) for y (B, *nodes, D), summed over the observed frames
        (`mask`): (B,). The globals sit at their point estimate, the local posterior under q(theta)
        (`potentials`, from `expected_globals`) is the proposal and the graphical model sums its discrete
        latents out exactly."""
        point = self.pgm.potentials(self.pgm.global_stats(point=True))

        def log_weights(n: int) -> torch.Tensor:
            post = self.infer(y, potentials, n, mask)
            x = post.samples
            return (self.log_likelihood(y, x, mask) + self.pgm.prior_log_prob(point, x, mask)
                    - self.pgm.posterior_log_prob(post, x))

        return iw_log_likelihood(log_weights, num_samples, len(y))

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per example: `frames` (observed); `elbo` and `iw_nll` summed over them (the ELBO with its share of the
        global KL, KL / N); then what the architecture's own metrics need (`evaluate_more`)."""
        y, mask = self.observations(batch), self.observed_nodes(batch)
        out = {"frames": self.frames(y, mask)}
        potentials, kl_global = self.expected_globals()
        post = self.infer(y, potentials, self.eval_samples, mask)
        if "elbo" in metrics:
            out["elbo"] = self.log_likelihood(y, post.samples, mask).mean(0) - post.kl - kl_global / self.num_train
        out.update(self.evaluate_more(batch, y, post, metrics))
        if "iw_nll" in metrics:
            out["iw_nll"] = -self.iw_log_likelihood(y, options["iw_samples"], potentials, mask)
        return out

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: LocalPosterior,
                      metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-example values of the architecture's own metrics, given the local posterior `post`."""
        return {}

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """KL(q(theta) || p(theta)) per frame of the training set."""
        return {"kl_global": float(self.expected_globals().kl) / (self.num_train * self.frames_per_example)}


def _globals_into_pgm(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Older checkpoints: the global factors at the top level (`q_niw_phi`), now under `pgm.` (`pgm.q_niw_phi`);
    the MNIW's natural parameters named after K (`mniw_k_inv`, `mniw_k_inv_mt`), now after V (`mniw_v_inv`)."""
    for key in [k for k in state_dict if k.startswith((f"{prefix}q_", f"{prefix}prior_"))]:
        state_dict[f"{prefix}pgm.{key[len(prefix):]}"] = state_dict.pop(key)
    for key in [k for k in state_dict if k.startswith(prefix) and "_mniw_k_inv" in k]:
        state_dict[key.replace("_mniw_k_inv", "_mniw_v_inv")] = state_dict.pop(key)
