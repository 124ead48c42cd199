"""SVAE-LDS: a linear dynamical system over the latents, per-frame recognition potentials and a
per-frame diagonal-Gaussian decoder (SVAE.md sections 2, 4 and 5)."""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

from base.metric import PerExample
from model.expfam import mniw, niw
from model.networks import GaussianResNet
from model.registry import ARCHITECTURES
from model.svae.graphical_model import MNIW, NIW, GraphicalModel
from model.svae.kalman import METHODS, LDSPosterior, LDSPotentials, chain_extent, chain_log_potential, \
    expected_lds_potentials, lds_posterior, truncate_chain
from model.svae.recognition import GaussianRecognition
from model.svae.sequence import SequenceSVAE


class ChainPosterior(NamedTuple):
    """q(x_1:T) of a Gaussian chain with what built it: the smoother's output, the chain's potentials and the
    node potentials (B, T, n), the local KL (B,), and the frames inside each chain (B, T) (None: all)."""
    chain: LDSPosterior
    potentials: LDSPotentials
    node_J: torch.Tensor
    node_h: torch.Tensor
    kl: torch.Tensor
    within: torch.Tensor | None = None

    @property
    def samples(self) -> torch.Tensor | None:
        return self.chain.samples

    @property
    def mean(self) -> torch.Tensor:
        return self.chain.mean

    @property
    def retries(self) -> torch.Tensor:
        return self.chain.retries


def expected_node_potential(chain: LDSPosterior, node_J: torch.Tensor, node_h: torch.Tensor) -> torch.Tensor:
    """sum_t E_q[psi_t(x_t)] of diagonal node potentials (B, T, n) under q(x_1:T): (B,)."""
    second = chain.cov.diagonal(dim1=-2, dim2=-1) + chain.mean ** 2
    return (-0.5 * node_J * second + node_h * chain.mean).sum((-2, -1))


def pair_weights(post: ChainPosterior) -> torch.Tensor | None:
    """Which steps (t, t+1) of each chain are real transitions, (B, T-1) float, for the SVI statistics: those
    into a frame inside the chain (None: every step). Reads `within` and `chain` (a SwitchingPosterior too)."""
    return None if post.within is None else post.within[:, 1:].to(post.chain.mean.dtype)


def second_moments(chain: LDSPosterior) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[x_t x_t^T] (B, T, n, n) and E_q[x_t x_t+1^T] (B, T-1, n, n)."""
    mean = chain.mean
    second = chain.cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
    cross = chain.cross_cov + mean[:, :-1].unsqueeze(-1) * mean[:, 1:].unsqueeze(-2)
    return second, cross


def chain_posterior_log_prob(post: ChainPosterior, x: torch.Tensor) -> torch.Tensor:
    """log q(x) of a Gaussian chain posterior = the chain's and the node potentials that built it at x
    (S, B, T, n), minus its log Z: (S, B)."""
    nodes = (-0.5 * post.node_J * x ** 2 + post.node_h * x).sum((-2, -1))
    return chain_log_potential(post.potentials, x) + nodes - post.chain.log_z


class LinearDynamicalSystem(GraphicalModel):
    """x_1 ~ N(mu0, Sigma0), x_{t+1} = A x_t + eps, eps ~ N(0, Q): one n-dimensional latent per frame.
    Global factors "niw" (mu0, Sigma0) and "mniw" (A, Q), at the authors' prior (nu = n + 1,
    S = 2 (n + 1) I, m = 0, kappa = 1 / (2n), M = I, K = I / (2n)), where q(theta) also starts. Local
    inference is exact (Kalman filter, RTS smoother, backward sampler; `kalman.py`), `inference`
    "sequential" or "parallel" (associative scans)."""

    def __init__(self, latent_dim: int, inference: str = "sequential"):
        super().__init__()
        if inference not in METHODS:
            raise ValueError(f"inference must be one of {METHODS}, got {inference!r}")
        self.latent_dim, self.inference = latent_dim, inference
        n, f64 = latent_dim, torch.float64
        eye = torch.eye(n, dtype=f64)
        nu = torch.tensor(n + 1.0, dtype=f64)
        scale = 2.0 * (n + 1) * eye
        self.add_global_factor("niw", NIW, niw.standard_to_natural(torch.zeros(n, dtype=f64),
                                                                   torch.tensor(1.0 / (2 * n), dtype=f64), scale, nu))
        self.add_global_factor("mniw", MNIW, mniw.standard_to_natural(eye, eye / (2 * n), scale, nu))

    def potentials(self, stats: dict[str, Any]) -> LDSPotentials:
        return expected_lds_potentials(stats["niw"], stats["mniw"])

    def infer(self, potentials: LDSPotentials, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: torch.Tensor | None = None) -> ChainPosterior:
        within = None if mask is None else chain_extent(mask)
        if within is not None:
            potentials = truncate_chain(potentials, within)
        chain = lds_posterior(potentials, node_J, node_h, num_samples, self.inference)
        return ChainPosterior(chain, potentials, node_J, node_h, self.local_kl(chain, node_J, node_h), within)

    @staticmethod
    def local_kl(chain: LDSPosterior, node_J: torch.Tensor, node_h: torch.Tensor) -> torch.Tensor:
        """KL(q(x) || p(x | theta)) = sum_t E_q[psi_t(x_t)] - log Z: (B,)."""
        return expected_node_potential(chain, node_J, node_h) - chain.log_z

    def statistics(self, post: ChainPosterior) -> dict[str, torch.Tensor]:
        """NIW (initial state): (E x_1 x_1^T, E x_1, count, count); MNIW (pairs): (sum_t E x_t x_t^T,
        sum_t E x_t x_{t+1}^T, sum_t E x_{t+1} x_{t+1}^T, pairs); summed over sequences, over the steps inside
        each chain."""
        mean = post.chain.mean.detach()
        second, cross = (m.detach() for m in second_moments(post.chain))
        B, T = mean.shape[:2]
        count = mean.new_tensor(float(B))
        steps = pair_weights(post)
        if steps is None:
            pairs = mean.new_tensor(float(B * (T - 1)))
            now, cross, later = second[:, :-1].sum((0, 1)), cross.sum((0, 1)), second[:, 1:].sum((0, 1))
        else:
            pairs = steps.sum()
            now, cross, later = (torch.einsum("bt,btij->ij", steps, m) for m in (second[:, :-1], cross, second[:, 1:]))
        return {"niw_phi": second[:, 0].sum(0), "niw_b": mean[:, 0].sum(0), "niw_kappa": count, "niw_nu": count,
                "mniw_k_inv": now, "mniw_k_inv_mt": cross, "mniw_phi": later, "mniw_nu": pairs, "count": count}

    def posterior_log_prob(self, post: ChainPosterior, x: torch.Tensor) -> torch.Tensor:
        return chain_posterior_log_prob(post, x)

    def prior_log_prob(self, potentials: LDSPotentials, x: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            potentials = truncate_chain(potentials, chain_extent(mask))
        return chain_log_potential(potentials, x)

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
        data_shape: (T, P), set by the framework; num_train: N training sequences (set by the framework).
        latent_dim: n.
        hidden_dims, activation, init_scale: encoder and decoder GaussianResNets.
        num_samples: S, joint samples of x_1:T per sequence for the reconstruction term in training.
        eval_samples: S for the held-out ELBO in test.py.
        rho: SVI step size of the globals.
        inference: "sequential" or "parallel" (associative scans) Kalman filter / smoother / sampler.
        prefix_len, horizon: P and H of the prediction metrics and figure (condition on frames 1..P,
            predict P+1..P+H).
        figure_samples: sampled continuations drawn in the figure.
        likelihood: "gaussian", "sigmoid_gaussian" (frames in [0, 1]) or "bernoulli" (binary frames).
        frames_per_example: F-bar, set by the framework.
    """

    def __init__(self, data_shape: tuple[int, int], num_train: int, latent_dim: int = 10,
                 hidden_dims: list[int] = (50,), activation: str = "tanh", init_scale: float = 1e-2,
                 num_samples: int = 1, eval_samples: int = 10, rho: float = 0.01, inference: str = "sequential",
                 prefix_len: int = 25, horizon: int = 20, figure_samples: int = 3,
                 likelihood: Literal["gaussian", "sigmoid_gaussian", "bernoulli"] = "sigmoid_gaussian",
                 frames_per_example: float | None = None):
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        obs_dim = data_shape[-1]
        encoder = GaussianRecognition(obs_dim, latent_dim, list(hidden_dims), activation, init_scale,
                                      precision_bound="exp_tanh")
        decoder = GaussianResNet(latent_dim, list(hidden_dims), obs_dim, activation, init_scale)
        super().__init__(LinearDynamicalSystem(latent_dim, inference), encoder, decoder, data_shape, num_train, rho,
                         num_samples, eval_samples, prefix_len, horizon, figure_samples, likelihood=likelihood,
                         frames_per_example=frames_per_example)
        self.latent_dim = latent_dim

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """Besides the KL: the moduli of E[A]'s eigenvalues, largest first."""
        moduli = torch.linalg.eigvals(self.pgm.dynamics_mean()).abs().sort(descending=True).values
        summary = super().model_summary(per_example)
        return {**summary, "dynamics_eigenvalue_moduli": [round(float(m), 6) for m in moduli]}
