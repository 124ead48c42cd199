"""Matrix-normal-inverse-Wishart over linear-Gaussian dynamics x' = A x + eps, eps ~ N(0, Q).

Standard parameters (M, K, S, nu): Q ~ IW(S, nu) (n x n), A | Q ~ MN(M, Q, K) (A: n x m, K: m x m),
i.e. vec(A) ~ N(vec(M), K kron Q).
Natural parameters (K^-1, K^-1 M^T, S + M K^-1 M^T, nu), paired with
t(A, Q) = (-1/2 A^T Q^-1 A, A^T Q^-1, -1/2 Q^-1, 1/2 log|Q^-1|); a pair (x, x') adds
(x x^T, x x'^T, x' x'^T, 1) to them.
A = n nu/2 log 2 + log Gamma_n(nu/2) - nu/2 log|S| + n/2 log|K|.
Shapes: k_inv (..., m, m), k_inv_mt (..., m, n), phi (..., n, n), nu (...).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam.niw import expected_logdet_precision
from model.expfam.psd import chol_logdet, psd_cholesky, psd_inverse, symmetrize


class MNIWNatural(NamedTuple):
    k_inv: torch.Tensor
    k_inv_mt: torch.Tensor
    phi: torch.Tensor
    nu: torch.Tensor


class MNIWExpectations(NamedTuple):
    """E[A^T Q^-1 A] = n K + nu M^T S^-1 M (..., m, m) (the n K term is the uncertainty about A),
    E[Q^-1 A] = nu S^-1 M (..., n, m), E[Q^-1] = nu S^-1 (..., n, n), E[log|Q^-1|] (...).
    grad A = (-1/2 aqa, qa^T, -1/2 q, 1/2 logdet)."""
    aqa: torch.Tensor
    qa: torch.Tensor
    q: torch.Tensor
    logdet: torch.Tensor


def standard_to_natural(M: torch.Tensor, K: torch.Tensor, S: torch.Tensor, nu: torch.Tensor) -> MNIWNatural:
    k_inv = psd_inverse(K)
    k_inv_mt = k_inv @ M.mT
    return MNIWNatural(k_inv, k_inv_mt, S + M @ k_inv_mt, nu)


def natural_to_standard(eta: MNIWNatural) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (M, K, S, nu)."""
    chol, _ = psd_cholesky(eta.k_inv)
    M = torch.cholesky_solve(eta.k_inv_mt, chol).mT
    S = symmetrize(eta.phi - M @ eta.k_inv_mt)
    return M, symmetrize(torch.cholesky_inverse(chol)), S, eta.nu


def log_normalizer(eta: MNIWNatural) -> torch.Tensor:
    _, _, S, nu = natural_to_standard(eta)
    n = S.shape[-1]
    return (0.5 * nu * n * math.log(2.0) + torch.mvlgamma(nu / 2, n) - 0.5 * nu * chol_logdet(psd_cholesky(S)[0])
            - 0.5 * n * chol_logdet(psd_cholesky(eta.k_inv)[0]))


def expected_stats(eta: MNIWNatural) -> MNIWExpectations:
    M, K, S, nu = natural_to_standard(eta)
    n = S.shape[-1]
    chol, _ = psd_cholesky(S)
    S_inv_M = torch.cholesky_solve(M, chol)
    nu_ = nu[..., None, None]
    aqa = symmetrize(n * K + nu_ * M.mT @ S_inv_M)
    q = nu_ * symmetrize(torch.cholesky_inverse(chol))
    return MNIWExpectations(aqa, nu_ * S_inv_M, q, expected_logdet_precision(nu, chol_logdet(chol), n))


def point_stats(eta: MNIWNatural) -> MNIWExpectations:
    """t(A, Q) at the point estimate A = M, Q^-1 = E[Q^-1] = nu S^-1 (what a plug-in likelihood
    uses): `expected_stats` without the uncertainty terms."""
    M, _, S, nu = natural_to_standard(eta)
    n = S.shape[-1]
    chol, _ = psd_cholesky(S)
    q = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    qa = q @ M
    return MNIWExpectations(symmetrize(M.mT @ qa), qa, q, n * torch.log(nu) - chol_logdet(chol))


def kl(eta_q: MNIWNatural, eta_p: MNIWNatural, expected_q: MNIWExpectations | None = None) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...). Pass `expected_q` =
    expected_stats(eta_q) when it is at hand."""
    e = expected_stats(eta_q) if expected_q is None else expected_q
    inner = (-0.5 * ((eta_q.k_inv - eta_p.k_inv) * e.aqa).sum((-2, -1))
             + ((eta_q.k_inv_mt - eta_p.k_inv_mt) * e.qa.mT).sum((-2, -1))
             - 0.5 * ((eta_q.phi - eta_p.phi) * e.q).sum((-2, -1)) + 0.5 * (eta_q.nu - eta_p.nu) * e.logdet)
    return inner - log_normalizer(eta_q) + log_normalizer(eta_p)
