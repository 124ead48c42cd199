"""Multivariate Gaussian in information form.

log p(x) = -1/2 x^T J x + h^T x - A(J, h), natural parameters (J, h), sufficient
statistics t(x) = (-1/2 x x^T, x), so grad A = (-1/2 E[x x^T], E[x]).
J: (..., n, n) precision, h: (..., n) potential vector.
"""
from __future__ import annotations

import math

import torch

from model.expfam.psd import chol_logdet, psd_cholesky, psd_inverse, symmetrize


def log_normalizer(J: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A(J, h) = 1/2 h^T J^-1 h - 1/2 log|J| + n/2 log 2 pi: (...)."""
    chol = psd_cholesky(J)
    mean = torch.cholesky_solve(h.unsqueeze(-1), chol).squeeze(-1)
    return 0.5 * (h * mean).sum(-1) - 0.5 * chol_logdet(chol) + 0.5 * h.shape[-1] * math.log(2 * math.pi)


def expected_stats(J: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x x^T] (..., n, n), E[x] (..., n)) with E[x] = J^-1 h and E[x x^T] = J^-1 + E[x] E[x]^T."""
    mean, cov = natural_to_mean_cov(J, h)
    return cov + mean.unsqueeze(-1) * mean.unsqueeze(-2), mean


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
    chol = psd_cholesky(J)
    mean = torch.cholesky_solve(h.unsqueeze(-1), chol).squeeze(-1)
    return mean, symmetrize(torch.cholesky_inverse(chol))


def sample(chol: torch.Tensor, mean: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Reparameterised samples x = mean + L^-T eps, where J = L L^T (chol: Cholesky factor of the
    precision): (S, ..., n). Differentiable in `chol` and `mean`."""
    eps = torch.randn(num_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
    upper = chol.mT.expand(num_samples, *chol.shape)
    return mean + torch.linalg.solve_triangular(upper, eps.unsqueeze(-1), upper=True).squeeze(-1)
