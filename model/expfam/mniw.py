"""Matrix-normal-inverse-Wishart over linear-Gaussian dynamics x' = A x + eps, eps ~ N(0, Q).

Standard parameters (M, V, Psi, nu): Q ~ IW(Psi, nu) (n x n), A | Q ~ MN(M, Q, V) (A: n x m, V: m x m),
i.e. vec(A) ~ N(vec(M), V kron Q).
Natural parameters (V^-1, V^-1 M^T, Psi + M V^-1 M^T, nu), paired with
t(A, Q) = (-1/2 A^T Q^-1 A, A^T Q^-1, -1/2 Q^-1, 1/2 log|Q^-1|); a pair (x, x') adds
(x x^T, x x'^T, x' x'^T, 1) to them.
A = n nu/2 log 2 + log Gamma_n(nu/2) - nu/2 log|Psi| + n/2 log|V|.
Shapes: v_inv (..., m, m), v_inv_mt (..., m, n), phi (..., n, n), nu (...).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam.niw import expected_logdet_precision
from model.expfam.psd import chol_logdet, psd_cholesky, psd_inverse, symmetrize


class MNIWNatural(NamedTuple):
    v_inv: torch.Tensor
    v_inv_mt: torch.Tensor
    phi: torch.Tensor
    nu: torch.Tensor


class MNIWExpectations(NamedTuple):
    """E[A^T Q^-1 A] = n V + nu M^T Psi^-1 M (..., m, m) (the n V term is the uncertainty about A),
    E[Q^-1 A] = nu Psi^-1 M (..., n, m), E[Q^-1] = nu Psi^-1 (..., n, n), E[log|Q^-1|] (...).
    grad A = (-1/2 aqa, qa^T, -1/2 q, 1/2 logdet)."""
    aqa: torch.Tensor
    qa: torch.Tensor
    q: torch.Tensor
    logdet: torch.Tensor


def standard_to_natural(M: torch.Tensor, V: torch.Tensor, Psi: torch.Tensor, nu: torch.Tensor) -> MNIWNatural:
    v_inv = psd_inverse(V)
    v_inv_mt = v_inv @ M.mT
    return MNIWNatural(v_inv, v_inv_mt, Psi + M @ v_inv_mt, nu)


def natural_to_standard(eta: MNIWNatural) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (M, V, Psi, nu)."""
    chol, _ = psd_cholesky(eta.v_inv)
    M = torch.cholesky_solve(eta.v_inv_mt, chol).mT
    Psi = symmetrize(eta.phi - M @ eta.v_inv_mt)
    return M, symmetrize(torch.cholesky_inverse(chol)), Psi, eta.nu


def log_normalizer(eta: MNIWNatural) -> torch.Tensor:
    _, _, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    return (0.5 * nu * n * math.log(2.0) + torch.mvlgamma(nu / 2, n) - 0.5 * nu * chol_logdet(psd_cholesky(Psi)[0])
            - 0.5 * n * chol_logdet(psd_cholesky(eta.v_inv)[0]))


def expected_stats(eta: MNIWNatural) -> MNIWExpectations:
    M, V, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    chol, _ = psd_cholesky(Psi)
    S_inv_M = torch.cholesky_solve(M, chol)
    nu_ = nu[..., None, None]
    aqa = symmetrize(n * V + nu_ * M.mT @ S_inv_M)
    q = nu_ * symmetrize(torch.cholesky_inverse(chol))
    return MNIWExpectations(aqa, nu_ * S_inv_M, q, expected_logdet_precision(nu, chol_logdet(chol), n))


def point_stats(eta: MNIWNatural) -> MNIWExpectations:
    """t(A, Q) at the point estimate A = M, Q^-1 = E[Q^-1] = nu Psi^-1 (what a plug-in likelihood
    uses): `expected_stats` without the uncertainty terms."""
    M, _, Psi, nu = natural_to_standard(eta)
    n = Psi.shape[-1]
    chol, _ = psd_cholesky(Psi)
    q = nu[..., None, None] * symmetrize(torch.cholesky_inverse(chol))
    qa = q @ M
    return MNIWExpectations(symmetrize(M.mT @ qa), qa, q, n * torch.log(nu) - chol_logdet(chol))


def kl(eta_q: MNIWNatural, eta_p: MNIWNatural, expected_q: MNIWExpectations | None = None) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...). Pass `expected_q` =
    expected_stats(eta_q) when it is at hand."""
    e = expected_stats(eta_q) if expected_q is None else expected_q
    inner = (-0.5 * ((eta_q.v_inv - eta_p.v_inv) * e.aqa).sum((-2, -1))
             + ((eta_q.v_inv_mt - eta_p.v_inv_mt) * e.qa.mT).sum((-2, -1))
             - 0.5 * ((eta_q.phi - eta_p.phi) * e.q).sum((-2, -1)) + 0.5 * (eta_q.nu - eta_p.nu) * e.logdet)
    return inner - log_normalizer(eta_q) + log_normalizer(eta_p)
