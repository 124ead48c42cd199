"""Normal-inverse-Wishart over a Gaussian's (mu, Sigma), d-dimensional.

Standard parameters (m, kappa, S, nu): Sigma ~ IW(S, nu), mu | Sigma ~ N(m, Sigma / kappa).
Natural parameters (phi, b, kappa, nu) = (S + kappa m m^T, kappa m, kappa, nu), paired with
t(mu, Sigma) = (-1/2 Sigma^-1, Sigma^-1 mu, -1/2 mu^T Sigma^-1 mu, 1/2 log|Sigma^-1|), so a
Gaussian point x adds (x x^T, x, 1, 1) to the natural parameters (the conjugate update).
A = nu d/2 log 2 + log Gamma_d(nu/2) - nu/2 log|S| - d/2 log kappa.
Shapes: phi (..., d, d), b (..., d), kappa (...), nu (...). Valid: S positive definite,
kappa > 0, nu > d - 1.
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
    """E[Sigma^-1] (..., d, d), E[Sigma^-1 mu] (..., d), E[mu^T Sigma^-1 mu] (...), E[log|Sigma^-1|] (...).
    grad A = (-1/2 J, h, -1/2 quad, 1/2 logdet)."""
    J: torch.Tensor
    h: torch.Tensor
    quad: torch.Tensor
    logdet: torch.Tensor


def standard_to_natural(m: torch.Tensor, kappa: torch.Tensor, S: torch.Tensor, nu: torch.Tensor) -> NIWNatural:
    return NIWNatural(S + kappa[..., None, None] * m.unsqueeze(-1) * m.unsqueeze(-2), kappa[..., None] * m, kappa, nu)


def natural_to_standard(eta: NIWNatural) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (m, kappa, S, nu)."""
    m = eta.b / eta.kappa[..., None]
    S = symmetrize(eta.phi - eta.kappa[..., None, None] * m.unsqueeze(-1) * m.unsqueeze(-2))
    return m, eta.kappa, S, eta.nu


def expected_logdet_precision(nu: torch.Tensor, logdet_S: torch.Tensor, d: int) -> torch.Tensor:
    """E[log|Sigma^-1|] for Sigma ~ IW(S, nu): sum_{i<d} digamma((nu - i)/2) + d log 2 - log|S|."""
    i = torch.arange(d, dtype=nu.dtype, device=nu.device)
    return torch.digamma((nu.unsqueeze(-1) - i) / 2).sum(-1) + d * math.log(2.0) - logdet_S


def log_normalizer(eta: NIWNatural) -> torch.Tensor:
    _, kappa, S, nu = natural_to_standard(eta)
    d = S.shape[-1]
    return (0.5 * nu * d * math.log(2.0) + torch.mvlgamma(nu / 2, d) - 0.5 * nu * chol_logdet(psd_cholesky(S)[0])
            - 0.5 * d * torch.log(kappa))


def expected_stats(eta: NIWNatural) -> NIWExpectations:
    m, kappa, S, nu = natural_to_standard(eta)
    d = S.shape[-1]
    chol, _ = psd_cholesky(S)
    S_inv_m = torch.cholesky_solve(m.unsqueeze(-1), chol).squeeze(-1)
    J = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    quad = d / kappa + nu * (m * S_inv_m).sum(-1)
    return NIWExpectations(J, nu[..., None] * S_inv_m, quad, expected_logdet_precision(nu, chol_logdet(chol), d))


def point_stats(eta: NIWNatural) -> NIWExpectations:
    """t(mu, Sigma) at the point estimate mu = m, Sigma^-1 = E[Sigma^-1] = nu S^-1 (what a plug-in
    likelihood uses): `expected_stats` without the uncertainty terms."""
    m, _, S, nu = natural_to_standard(eta)
    d = S.shape[-1]
    chol, _ = psd_cholesky(S)
    J = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    h = (J @ m.unsqueeze(-1)).squeeze(-1)
    return NIWExpectations(J, h, (h * m).sum(-1), d * torch.log(nu) - chol_logdet(chol))


def kl(eta_q: NIWNatural, eta_p: NIWNatural, expected_q: NIWExpectations | None = None) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...). Pass `expected_q` =
    expected_stats(eta_q) when it is at hand."""
    e = expected_stats(eta_q) if expected_q is None else expected_q
    inner = (-0.5 * ((eta_q.phi - eta_p.phi) * e.J).sum((-2, -1)) + ((eta_q.b - eta_p.b) * e.h).sum(-1)
             - 0.5 * (eta_q.kappa - eta_p.kappa) * e.quad + 0.5 * (eta_q.nu - eta_p.nu) * e.logdet)
    return inner - log_normalizer(eta_q) + log_normalizer(eta_p)


def expected_gaussian_potential(e: NIWExpectations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E_q(mu, Sigma)[log N(x | mu, Sigma)] = -1/2 x^T J x + h^T x + const: returns (J, h, const)."""
    d = e.h.shape[-1]
    return e.J, e.h, -0.5 * e.quad + 0.5 * e.logdet - 0.5 * d * math.log(2 * math.pi)


def weighted_gaussian_stats(weights: torch.Tensor, second: torch.Tensor, mean: torch.Tensor) -> NIWNatural:
    """What points with Gaussian statistics (E[x x^T] (B, d, d), E[x] (B, d)) assigned to K components
    with weights (B, K) add to the K NIW natural parameters: (sum w E[xx^T], sum w E[x], sum w, sum w)."""
    counts = weights.sum(0)
    phi = torch.einsum("bk,bij->kij", weights, second)
    return NIWNatural(phi, weights.mT @ mean, counts, counts)
