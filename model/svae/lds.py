"""SVAE-LDS: a linear dynamical system over the latents, per-frame recognition potentials and a
per-frame diagonal-Gaussian decoder (SVAE.md sections 2, 4 and 5)."""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

from base.metric import PerExample
from model.expfam import mniw
from model.expfam.mniw import MNIWNatural
from model.expfam.niw import NIWNatural
from model.registry import ARCHITECTURES
from model.svae.chain import ChainPosterior, dynamics_prior, dynamics_statistics, initial_state_prior, \
    initial_state_statistics, point_dynamics, simulate_dynamics, smooth_chain
from model.svae.graphical_model import MNIW, NIW, GraphicalModel
from model.svae.kalman import METHODS, LDSPotentials, chain_extent, chain_log_potential, expected_lds_potentials, \
    lds_posterior, truncate_chain
from model.svae.sequence import SequenceSVAE


class ChainStatistics(NamedTuple):
    """The LDS's statistics: the initial state's NIW, the dynamics' MNIW, and the sequences they sum over."""
    niw: NIWNatural
    mniw: MNIWNatural
    count: torch.Tensor


class LinearDynamicalSystem(GraphicalModel):
    """x_1 ~ N(mu0, Sigma0), x_{t+1} = A x_t + eps, eps ~ N(0, Q): one n-dimensional latent per frame.
    Global factors "niw" (mu0, Sigma0) and "mniw" (A, Q), at the authors' prior (`chain.py`), where q(theta)
    also starts. Local inference is exact (Kalman filter, RTS smoother, backward sampler; `kalman.py`),
    `inference` "sequential" or "parallel" (associative scans)."""

    Statistics = ChainStatistics

    def __init__(self, latent_dim: int, inference: str = "sequential"):
        super().__init__()
        if inference not in METHODS:
            raise ValueError(f"inference must be one of {METHODS}, got {inference!r}")
        self.latent_dim, self.inference = latent_dim, inference
        self.add_global_factor("niw", NIW, initial_state_prior(latent_dim))
        self.add_global_factor("mniw", MNIW, dynamics_prior(latent_dim))

    def potentials(self, stats: dict[str, Any]) -> LDSPotentials:
        return expected_lds_potentials(stats["niw"], stats["mniw"])

    def infer(self, potentials: LDSPotentials, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: torch.Tensor | None = None) -> ChainPosterior:
        within = None if mask is None else chain_extent(mask)
        if within is not None:
            potentials = truncate_chain(potentials, within)
        smoothed = lds_posterior(potentials, node_J, node_h, num_samples, self.inference)
        return smooth_chain(smoothed, potentials, node_J, node_h, within)

    def statistics(self, post: ChainPosterior) -> ChainStatistics:
        """NIW (initial state): (E x_1 x_1^T, E x_1, count, count); MNIW (pairs): (sum_t E x_t x_t^T,
        sum_t E x_t x_{t+1}^T, sum_t E x_{t+1} x_{t+1}^T, pairs); summed over sequences, over the steps inside
        each chain."""
        initial = initial_state_statistics(post)
        return ChainStatistics(initial, dynamics_statistics(post), initial.kappa)

    def posterior_log_prob(self, post: ChainPosterior, x: torch.Tensor) -> torch.Tensor:
        return post.log_prob(x)

    def prior_log_prob(self, potentials: LDSPotentials, x: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            potentials = truncate_chain(potentials, chain_extent(mask))
        return chain_log_potential(potentials, x)

    def forecast(self, post: ChainPosterior, horizon: int, num_samples: int) -> torch.Tensor:
        """x at the last frame from q(x) (the posterior's first `num_samples` samples), then x_t+1 = A x_t + eps,
        eps ~ N(0, Q), at the point estimate of the dynamics (`chain.point_dynamics`): (S, B, H, n)."""
        return simulate_dynamics(post.samples[:num_samples, :, -1], *point_dynamics(self.natural("mniw")), horizon)

    def dynamics_mean(self) -> torch.Tensor:
        """E[A] = M (n, n)."""
        return mniw.natural_to_standard(self.natural("mniw"))[0]


@ARCHITECTURES.register("SVAE-LDS")
class SVAELDS(SequenceSVAE):
    """Structured VAE whose latent sequence x_1:T (n-dimensional) is a linear dynamical system
    (`LinearDynamicalSystem`), with per-frame recognition potentials and decoder.

    Networks: recognition y_t -> psi_t(x_t) (diagonal precision exp(10 tanh(./10))) and decoder
    x_t -> p(y_t | x_t), by default N(y_t | sigmoid(mean), diag var) with the log-variance bounded by
    10 tanh(./10) (`likelihood`, see SequenceSVAE). With F the real frames of the batch and F-bar per training
    sequence: ELBO per frame = sum_batch[E_q log p(y | x) - KL_local] / F - KL(q(theta) || p(theta)) / (N F-bar).

    Args:
        data_shape: (T, D), set by the framework; num_train: N training sequences (set by the framework).
        latent_dim: n.
        hidden_dims, activation, init_scale: encoder and decoder GaussianResNets.
        num_samples: S, joint samples of x_1:T per sequence for the reconstruction term in training.
        eval_samples: S for the held-out ELBO in test.py.
        rho: SVI step size of the globals.
        inference: "sequential" or "parallel" (associative scans) Kalman filter / smoother / sampler.
        prefix_len, horizon: of the prediction metrics and figure (condition on frames 1..prefix_len,
            predict the next H).
        figure_samples: sampled continuations drawn in the figure.
        likelihood: "gaussian", "sigmoid_gaussian" (frames in [0, 1]) or "bernoulli" (binary frames).
        frames_per_example: F-bar, set by the framework.
        prediction_samples: sampled continuations whose decoded mean is the prediction (`pred_mse`).
    """

    def __init__(self, data_shape: tuple[int, int], num_train: int, latent_dim: int = 10,
                 hidden_dims: list[int] = (50,), activation: str = "tanh", init_scale: float = 1e-2,
                 num_samples: int = 1, eval_samples: int = 10, rho: float = 0.01, inference: str = "sequential",
                 prefix_len: int = 25, horizon: int = 20, figure_samples: int = 3,
                 likelihood: Literal["gaussian", "sigmoid_gaussian", "bernoulli"] = "sigmoid_gaussian",
                 frames_per_example: float | None = None, prediction_samples: int = 100):
        super().__init__(lambda: LinearDynamicalSystem(latent_dim, inference), data_shape, num_train, latent_dim,
                         hidden_dims, activation, init_scale, rho, num_samples, eval_samples, prefix_len, horizon,
                         figure_samples, likelihood=likelihood, frames_per_example=frames_per_example,
                         prediction_samples=prediction_samples)

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """Besides the KL: the moduli of E[A]'s eigenvalues, largest first."""
        moduli = torch.linalg.eigvals(self.pgm.dynamics_mean()).abs().sort(descending=True).values
        summary = super().model_summary(per_example)
        return {**summary, "dynamics_eigenvalue_moduli": [round(float(m), 6) for m in moduli]}
