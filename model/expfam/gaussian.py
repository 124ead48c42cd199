"""Multivariate Gaussian in information form: the one Gaussian of the code base.

log p(x) = -1/2 x^T J x + h^T x - A(J, h), natural parameters (J, h), sufficient statistics
t(x) = (-1/2 x x^T, x), so grad A = (-1/2 E[x x^T], E[x]), and

    A(J, h) = 1/2 h^T J^-1 h - 1/2 log|J| + n/2 log 2 pi.

`InfoGaussian` holds (J, h) with any batch shape and their Cholesky factor, computed once; mean
field (SVAE-GMM), the Kalman smoother (SVAE-LDS) and the functions below all go through it.
J: (..., n, n) precision, h: (..., n) potential vector.
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
