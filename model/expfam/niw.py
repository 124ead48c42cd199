"""Normal-inverse-Wishart over a Gaussian's (mu, Sigma), n-dimensional.

Standard parameters (m, kappa, Psi, nu): Sigma ~ IW(Psi, nu), mu | Sigma ~ N(m, Sigma / kappa).
Natural parameters (phi, b, kappa, nu) = (Psi + kappa m m^T, kappa m, kappa, nu), paired with
t(mu, Sigma) = (-1/2 Sigma^-1, Sigma^-1 mu, -1/2 mu^T Sigma^-1 mu, 1/2 log|Sigma^-1|), so a
Gaussian point x adds (x x^T, x, 1, 1) to the natural parameters (the conjugate update).
A = nu n/2 log 2 + log Gamma_n(nu/2) - nu/2 log|Psi| - n/2 log kappa.
Shapes: phi (..., n, n), b (..., n), kappa (...), nu (...). Valid: Psi positive definite,
kappa > 0, nu > n - 1.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam.psd import chol_logdet, psd_cholesky, symmetrize


class NIWNatural(NamedTuple):
    phi: torch.Tensor
    b: torch.Tensor
    kappa: torch.Tensor
    nu: torch.Tensor


class NIWExpectations(NamedTuple):
    """E[Sigma^-1] (..., n, n), E[Sigma^-1 mu] (..., n), E[mu^T Sigma^-1 mu] (...), E[log|Sigma^-1|] (...).
    grad A = (-1/2 J, h, -1/2 quad, 1/2 logdet)."""
    J: torch.Tensor
    h: torch.Tensor
    quad: torch.Tensor
    logdet: torch.Tensor


def standard_to_natural(m: torch.Tensor, kappa: torch.Tensor, Psi: torch.Tensor, nu: torch.Tensor) -> NIWNatural:
    return NIWNatural(Psi + kappa[..., None, None] * m.unsqueeze(-1) * m.unsqueeze(-2), kappa[..., None] * m, kappa, nu)


def natural_to_standard(eta: NIWNatural) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (m, kappa, Psi, nu)."""
    m = eta.b / eta.kappa[..., None]
    Psi = symmetrize(eta.phi - eta.kappa[..., None, None] * m.unsqueeze(-1) * m.unsqueeze(-2))
    return m, eta.kappa, Psi, eta.nu


def expected_logdet_precision(nu: torch.Tensor, logdet_Psi: torch.Tensor, n: int) -> torch.Tensor:
    """E[log|Sigma^-1|] for Sigma ~ IW(Psi, nu): sum_{i<n} digamma((nu - i)/2) + n log 2 - log|Psi|."""
    i = torch.arange(n, dtype=nu.dtype, device=nu.device)
    return torch.digamma((nu.unsqueeze(-1) - i) / 2).sum(-1) + n * math.log(2.0) - logdet_Psi


def log_normalizer(eta: NIWNatural) -> torch.Tensor:
    _, kappa, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    return (0.5 * nu * n * math.log(2.0) + torch.mvlgamma(nu / 2, n) - 0.5 * nu * chol_logdet(psd_cholesky(Psi)[0])
            - 0.5 * n * torch.log(kappa))


def expected_stats(eta: NIWNatural) -> NIWExpectations:
    m, kappa, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    chol, _ = psd_cholesky(Psi)
    S_inv_m = torch.cholesky_solve(m.unsqueeze(-1), chol).squeeze(-1)
    J = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    quad = n / kappa + nu * (m * S_inv_m).sum(-1)
    return NIWExpectations(J, nu[..., None] * S_inv_m, quad, expected_logdet_precision(nu, chol_logdet(chol), n))


def point_stats(eta: NIWNatural) -> NIWExpectations:
    """t(mu, Sigma) at the point estimate mu = m, Sigma^-1 = E[Sigma^-1] = nu Psi^-1 (what a plug-in
    likelihood uses): `expected_stats` without the uncertainty terms."""
    m, _, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    chol, _ = psd_cholesky(Psi)
    J = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    h = (J @ m.unsqueeze(-1)).squeeze(-1)
    return NIWExpectations(J, h, (h * m).sum(-1), n * torch.log(nu) - chol_logdet(chol))


def kl(eta_q: NIWNatural, eta_p: NIWNatural, expected_q: NIWExpectations | None = None) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...). Pass `expected_q` =
    expected_stats(eta_q) when it is at hand."""
    e = expected_stats(eta_q) if expected_q is None else expected_q
    inner = (-0.5 * ((eta_q.phi - eta_p.phi) * e.J).sum((-2, -1)) + ((eta_q.b - eta_p.b) * e.h).sum(-1)
             - 0.5 * (eta_q.kappa - eta_p.kappa) * e.quad + 0.5 * (eta_q.nu - eta_p.nu) * e.logdet)
    return inner - log_normalizer(eta_q) + log_normalizer(eta_p)


def expected_gaussian_potential(e: NIWExpectations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E_q(mu, Sigma)[log N(x | mu, Sigma)] = -1/2 x^T J x + h^T x + const: returns (J, h, const)."""
    n = e.h.shape[-1]
    return e.J, e.h, -0.5 * e.quad + 0.5 * e.logdet - 0.5 * n * math.log(2 * math.pi)


def weighted_gaussian_stats(weights: torch.Tensor, second: torch.Tensor, mean: torch.Tensor) -> NIWNatural:
    """What points with Gaussian statistics (E[x x^T] (B, n, n), E[x] (B, n)) assigned to K components
    with weights (B, K) add to the K NIW natural parameters: (sum w E[xx^T], sum w E[x], sum w, sum w)."""
    counts = weights.sum(0)
    phi = torch.einsum("bk,bij->kij", weights, second)
    return NIWNatural(phi, weights.mT @ mean, counts, counts)
