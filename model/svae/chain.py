"""The Gaussian chain shared by every SVAE over time (SVAE.md sections 4 and 6): the dynamics factors and their
prior, the chain posterior q(x_1:T) and the statistics that SVI reads of it.

An LDS (lds.py) has one dynamics (A, Q); a switching LDS (slds.py) has K of them, one per discrete state. Both
put an NIW factor on the initial state (mu0, Sigma0) and an MNIW factor on the dynamics (K of them in a batch),
at the authors' prior: nu = n + 1, Psi = 2 (n + 1) I, m = 0, kappa = 1 / (2n), M = I, V = I / (2n).
Shapes: B sequences, T frames, n latent dimensions; `within` (B, T) bool marks the frames inside each chain
(`kalman.chain_extent`; None: all).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from model.expfam import mniw, niw
from model.svae.kalman import LDSPosterior, LDSPotentials, chain_log_potential


def initial_state_prior(n: int) -> niw.NIWNatural:
    """NIW(m = 0, kappa = 1 / (2n), Psi = 2 (n + 1) I, nu = n + 1) on (mu0, Sigma0)."""
    f64 = torch.float64
    nu = torch.tensor(n + 1.0, dtype=f64)
    return niw.standard_to_natural(torch.zeros(n, dtype=f64), torch.tensor(1.0 / (2 * n), dtype=f64),
                                   2.0 * (n + 1) * torch.eye(n, dtype=f64), nu)


def dynamics_prior(n: int, num_states: int | None = None, M: torch.Tensor | None = None) -> mniw.MNIWNatural:
    """MNIW(M, V = I / (2n), Psi = 2 (n + 1) I, nu = n + 1) on (A, Q), M = I unless given; with `num_states` K a
    batch of K factors (K, ...). `M` (n, n) or (K, n, n): where q(theta) starts when it is not the prior."""
    f64 = torch.float64
    eye = torch.eye(n, dtype=f64)
    nu = torch.tensor(n + 1.0, dtype=f64)
    V, Psi = eye / (2 * n), 2.0 * (n + 1) * eye
    M = eye if M is None else M
    if num_states is None:
        return mniw.standard_to_natural(M, V, Psi, nu)
    K = num_states
    return mniw.standard_to_natural(M.expand(K, n, n), V.expand(K, n, n), Psi.expand(K, n, n), nu.expand(K))


class ChainPosterior(NamedTuple):
    """q(x_1:T) of a Gaussian chain with what built it: the smoother's output `smoothed`, the chain's potentials
    and the node potentials (B, T, n), kl = sum_t E_q[psi_t] - log Z (B,) (the local KL against the chain's
    potentials), and the frames inside each chain (B, T) (None: all)."""
    smoothed: LDSPosterior
    potentials: LDSPotentials
    node_J: torch.Tensor
    node_h: torch.Tensor
    kl: torch.Tensor
    within: torch.Tensor | None = None

    @property
    def samples(self) -> torch.Tensor | None:
        return self.smoothed.samples

    @property
    def mean(self) -> torch.Tensor:
        return self.smoothed.mean

    @property
    def retries(self) -> torch.Tensor:
        return self.smoothed.retries

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) = the chain's and the node potentials that built it at x (S, B, T, n), minus log Z: (S, B)."""
        nodes = (-0.5 * self.node_J * x ** 2 + self.node_h * x).sum((-2, -1))
        return chain_log_potential(self.potentials, x) + nodes - self.smoothed.log_z

    def second_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """E_q[x_t x_t^T] (B, T, n, n) and E_q[x_t x_t+1^T] (B, T-1, n, n)."""
        return second_moments(self.smoothed)

    def step_weights(self) -> torch.Tensor | None:
        """Which steps (t, t+1) are real transitions, (B, T-1) float: those into a frame inside the chain (None:
        every step)."""
        return None if self.within is None else self.within[:, 1:].to(self.smoothed.mean.dtype)


def smooth_chain(smoothed: LDSPosterior, potentials: LDSPotentials, node_J: torch.Tensor, node_h: torch.Tensor,
                 within: torch.Tensor | None = None) -> ChainPosterior:
    """The `ChainPosterior` of a smoother's output, with its local KL sum_t E_q[psi_t(x_t)] - log Z."""
    return ChainPosterior(smoothed, potentials, node_J, node_h,
                          expected_node_potential(smoothed, node_J, node_h) - smoothed.log_z, within)


def expected_node_potential(smoothed: LDSPosterior, node_J: torch.Tensor, node_h: torch.Tensor) -> torch.Tensor:
    """sum_t E_q[psi_t(x_t)] of diagonal node potentials (B, T, n) under q(x_1:T): (B,)."""
    second = smoothed.cov.diagonal(dim1=-2, dim2=-1) + smoothed.mean ** 2
    return (-0.5 * node_J * second + node_h * smoothed.mean).sum((-2, -1))


def second_moments(smoothed: LDSPosterior) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[x_t x_t^T] (B, T, n, n) and E_q[x_t x_t+1^T] (B, T-1, n, n)."""
    mean = smoothed.mean
    second = smoothed.cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
    cross = smoothed.cross_cov + mean[:, :-1].unsqueeze(-1) * mean[:, 1:].unsqueeze(-2)
    return second, cross


def initial_state_statistics(post: ChainPosterior) -> niw.NIWNatural:
    """The NIW factor's statistics: (sum_b E x_1 x_1^T, sum_b E x_1, B, B), detached."""
    mean = post.mean.detach()
    second = post.smoothed.cov[:, 0].detach() + mean[:, 0].unsqueeze(-1) * mean[:, 0].unsqueeze(-2)
    count = mean.new_tensor(float(len(mean)))
    return niw.NIWNatural(second.sum(0), mean[:, 0].sum(0), count, count)


def weighted_moments(weights: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """sum_b,t weights[b, t, j] moments[b, t] for weights (B, T', J) and moments (B, T', n, n): (J, n, n)."""
    return (weights.flatten(0, 1).mT @ moments.flatten(0, 1).flatten(-2)).unflatten(-1, moments.shape[-2:])


def dynamics_statistics(post: ChainPosterior, weights: torch.Tensor | None = None) -> mniw.MNIWNatural:
    """The MNIW factor's statistics over the real steps (`step_weights`), detached: (sum_t E x_t x_t^T,
    sum_t E x_t x_t+1^T, sum_t E x_t+1 x_t+1^T, steps). With `weights` (B, T-1, K) (a switching LDS's q(z_t),
    already zero on the steps outside the chains) one factor per state, each step weighted: (K, ...)."""
    second, cross = (m.detach() for m in post.second_moments())
    now, later = second[:, :-1], second[:, 1:]
    if weights is not None:
        return mniw.MNIWNatural(weighted_moments(weights, now), weighted_moments(weights, cross),
                                weighted_moments(weights, later), weights.sum((0, 1)))
    steps = post.step_weights()
    if steps is None:
        B, T = second.shape[:2]
        pairs = second.new_tensor(float(B * (T - 1)))
        return mniw.MNIWNatural(now.sum((0, 1)), cross.sum((0, 1)), later.sum((0, 1)), pairs)
    now, cross, later = (torch.einsum("bt,btij->ij", steps, m) for m in (now, cross, later))
    return mniw.MNIWNatural(now, cross, later, steps.sum())


def point_dynamics(eta: mniw.MNIWNatural) -> tuple[torch.Tensor, torch.Tensor]:
    """The dynamics at their point estimate (that of iw_nll): A = M and the Cholesky factor of Q = Psi / nu
    (Q^-1 = E[Q^-1]), each (..., n, n) for an MNIW of batch shape (...)."""
    M, _, Psi, nu = mniw.natural_to_standard(eta)
    return M, torch.linalg.cholesky(Psi / nu[..., None, None])


def simulate_dynamics(x: torch.Tensor, A: torch.Tensor, Q_chol: torch.Tensor, horizon: int,
                      state: torch.Tensor | None = None, transitions: torch.Tensor | None = None) -> torch.Tensor:
    """`horizon` steps x_t+1 = A x_t + eps, eps ~ N(0, Q), from x (S, B, n): (S, B, H, n). With one dynamics
    per discrete state (A, Q_chol (K, n, n)), `state` (S, B) picks each path's, and moves on as
    z_t+1 ~ transitions[z_t] (K, K) after every step."""
    future = []
    for _ in range(horizon):
        A_t, Q_t = (A, Q_chol) if state is None else (A[state], Q_chol[state])
        x = (A_t @ x.unsqueeze(-1) + Q_t @ torch.randn_like(x).unsqueeze(-1)).squeeze(-1)
        future.append(x)
        if state is not None:
            state = torch.multinomial(transitions[state.flatten()], 1).view(state.shape)
    return torch.stack(future, 2)
