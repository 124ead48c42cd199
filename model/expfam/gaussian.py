"""Multivariate Gaussian in information form: the one Gaussian of the code base.

log p(x) = -1/2 x^T J x + h^T x - A(J, h), natural parameters (J, h), sufficient statistics
t(x) = (-1/2 x x^T, x), so grad A = (-1/2 E[x x^T], E[x]), and

    A(J, h) = 1/2 h^T J^-1 h - 1/2 log|J| + n/2 log 2 pi.

`InfoGaussian` holds (J, h) with any batch shape and their Cholesky factor, computed once; mean
field (SVAE-GMM), the Kalman smoother (SVAE-LDS) and the functions below all go through it.
J: (..., n, n) precision, h: (..., n) potential vector.

The algebra of Gaussian potentials psi(x) = -1/2 x^T J x + h^T x (+ const) that inference is made of:
`add_potentials` (a product of densities), `mix_potentials` (a potential's expectation over a categorical
q(z) when its parameters depend on z), `condition` (fix part of x), `marginalise` (integrate part of x out)
and `expected_log_potential` (a potential's expectation under a Gaussian's moments).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam.psd import psd_cholesky, psd_inverse, symmetrize

LOG_2PI = math.log(2 * math.pi)


class InfoGaussian(NamedTuple):
    """N(J^-1 h, J^-1) with batch shape (...): J (..., n, n), h (..., n), the lower Cholesky factor
    `chol` of J and which of the batch's factorisations needed a jitter retry, `retried` (...) bool."""

    J: torch.Tensor
    h: torch.Tensor
    chol: torch.Tensor
    retried: torch.Tensor

    @classmethod
    def from_natural(cls, J: torch.Tensor, h: torch.Tensor, symmetric: bool = False) -> InfoGaussian:
        """Factor J once (`symmetric=True`: J is symmetric by construction)."""
        chol, retried = psd_cholesky(J, symmetric)
        return cls(J, h, chol, retried)

    def mean(self) -> torch.Tensor:
        """E[x] = J^-1 h: (..., n)."""
        return torch.cholesky_solve(self.h.unsqueeze(-1), self.chol).squeeze(-1)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x] (..., n), Cov[x] = J^-1 (..., n, n))."""
        cov = torch.cholesky_inverse(self.chol)
        return (cov @ self.h.unsqueeze(-1)).squeeze(-1), cov

    def log_normalizer(self, mean: torch.Tensor | None = None) -> torch.Tensor:
        """A(J, h): (...). Pass `mean` = J^-1 h when it is at hand."""
        mean = self.mean() if mean is None else mean
        half_logdet = self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return 0.5 * (self.h * mean).sum(-1) - half_logdet + 0.5 * self.h.shape[-1] * LOG_2PI

    def expected_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x x^T] (..., n, n), E[x] (..., n))."""
        mean, cov = self.moments()
        return cov + mean.unsqueeze(-1) * mean.unsqueeze(-2), mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x) for x (S, ..., n) (any leading sample dims): (S, ...)."""
        quadratic = (x.unsqueeze(-2) @ self.J @ x.unsqueeze(-1))[..., 0, 0]
        return -0.5 * quadratic + (self.h * x).sum(-1) - self.log_normalizer()

    def sample(self, num_samples: int, mean: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised samples x = E[x] + L^-T eps (J = L L^T): (S, ..., n), differentiable in
        J, h (through `chol`) and `mean` (pass it when it is at hand)."""
        mean = self.mean() if mean is None else mean
        eps = torch.randn(num_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
        upper = self.chol.mT.expand(num_samples, *self.chol.shape)
        return mean + torch.linalg.solve_triangular(upper, eps.unsqueeze(-1), upper=True).squeeze(-1)


def log_normalizer(J: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A(J, h): (...)."""
    return InfoGaussian.from_natural(J, h).log_normalizer()


def expected_stats(J: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x x^T] (..., n, n), E[x] (..., n))."""
    return InfoGaussian.from_natural(J, h).expected_stats()


def kl(Jq: torch.Tensor, hq: torch.Tensor, Jp: torch.Tensor, hp: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...)."""
    second, mean = expected_stats(Jq, hq)
    inner = -0.5 * ((Jq - Jp) * second).sum((-2, -1)) + ((hq - hp) * mean).sum(-1)
    return inner - log_normalizer(Jq, hq) + log_normalizer(Jp, hp)


def mean_cov_to_natural(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (..., n), covariance (..., n, n)) -> (J, h) = (Sigma^-1, Sigma^-1 mean)."""
    J = psd_inverse(cov)
    return J, (J @ mean.unsqueeze(-1)).squeeze(-1)


def natural_to_mean_cov(J: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, h) -> (mean J^-1 h, covariance J^-1)."""
    gaussian = InfoGaussian.from_natural(J, h)
    return gaussian.mean(), symmetrize(torch.cholesky_inverse(gaussian.chol))


def add_potentials(*potentials: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(psi_1(x)) exp(psi_2(x)) ... = exp(psi(x)) with (J, h) = (sum_i J_i, sum_i h_i): the potentials
    (J_i (..., n, n), h_i (..., n)) broadcast together."""
    J, h = potentials[0]
    for J_i, h_i in potentials[1:]:
        J, h = J + J_i, h + h_i
    return J, h


def mix_potentials(weights: torch.Tensor, natural: torch.Tensor) -> torch.Tensor:
    """E_q(z)[eta_z] = sum_k q(z = k) eta_k: a potential whose natural parameters depend on a discrete z, in
    expectation over q(z) (log-linear in eta, so its expected log-potential is the potential of the mixed
    eta). weights (..., K), natural (K, *shape) -> (..., *shape)."""
    K = natural.shape[0]
    return (weights @ natural.reshape(K, -1)).unflatten(-1, natural.shape[1:])


def condition(J_ab: torch.Tensor, h_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """psi(x_a | x_b) of a joint potential over (x_a, x_b), -1/2 [x_a; x_b]^T [[J_aa, J_ab], [J_ab^T, J_bb]]
    [x_a; x_b] + h_a^T x_a + h_b^T x_b, at a fixed x_b: precision J_aa (unchanged) and potential vector
    h_a - J_ab x_b. J_ab (..., n_a, n_b), h_a (..., n_a), x_b (..., n_b) -> h (..., n_a)."""
    return h_a - (J_ab @ x_b.unsqueeze(-1)).squeeze(-1)


def marginalise(J_aa: torch.Tensor, J_ab: torch.Tensor, J_bb: torch.Tensor, h_a: torch.Tensor,
                h_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_b integrated out of the joint potential of `condition`:
        int exp(psi(x_a, x_b)) dx_b = exp(-1/2 x_a^T (J_aa - J_ab J_bb^-1 J_ab^T) x_a
                                          + (h_a - J_ab J_bb^-1 h_b)^T x_a + A(J_bb, h_b))
    (a Schur complement). Returns (J (..., n_a, n_a), h (..., n_a), A(J_bb, h_b) (...), which factorisations
    of J_bb needed a jitter retry (...))."""
    n_a = h_a.shape[-1]
    chol, retried = psd_cholesky(J_bb, symmetric=True)
    W = torch.linalg.solve_triangular(chol, torch.cat([J_ab.mT, h_b.unsqueeze(-1)], -1), upper=False)
    W_J, w_h = W[..., :n_a], W[..., n_a:]
    const = 0.5 * (w_h[..., 0] ** 2).sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) \
        + 0.5 * h_b.shape[-1] * LOG_2PI
    return J_aa - W_J.mT @ W_J, h_a - (W_J.mT @ w_h).squeeze(-1), const, retried


def expected_log_potential(J: torch.Tensor, second: torch.Tensor, h: torch.Tensor | None = None,
                           mean: torch.Tensor | None = None) -> torch.Tensor:
    """E_q[-1/2 x^T J_k x + h_k^T x] = -1/2 <J_k, E[x x^T]> + <h_k, E[x]> for K potentials at once: J (K, n, n),
    h (K, n) (None: 0) under moments E[x x^T] (B, n, n) and E[x] (B, n): (B, K). One fused product."""
    n = J.shape[-1]
    linear = second.new_zeros(second.shape[0], J.shape[0]) if h is None else mean @ h.mT
    return torch.addmm(linear, second.reshape(-1, n * n), J.reshape(-1, n * n).mT, alpha=-0.5)
