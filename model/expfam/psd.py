"""Positive-definite linear algebra in one place: symmetrisation, Cholesky with a
counted jitter retry, inverses and log-determinants. Shapes: (..., n, n)."""
from __future__ import annotations

import torch

_RETRIES = {"count": 0}
MAX_TRIES = 6


def jitter_retries() -> int:
    """How many Cholesky factorisations needed a jitter retry since the process started."""
    return _RETRIES["count"]


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """(A + A^T) / 2 over the last two dims."""
    return 0.5 * (a + a.mT)


def psd_cholesky(a: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """Lower Cholesky factor L (L L^T = sym(A)) of (..., n, n) positive-definite matrices
    (`symmetric=True`: A is symmetric by construction and is used as it is).

    Matrices that fail get jitter added to the diagonal, starting at 1e-10 times their
    mean absolute diagonal and growing 100x per retry; each retry is counted
    (`jitter_retries`). A matrix that still fails after the last retry yields NaN, so
    the loss turns non-finite and the Trainer's nan_policy decides what happens.
    """
    if not symmetric:
        a = symmetrize(a)
    chol, info = torch.linalg.cholesky_ex(a)
    failed = info > 0
    if not bool(failed.any()):
        return chol
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    jitter = 1e-10 * scale
    for _ in range(MAX_TRIES):
        _RETRIES["count"] += 1
        retry, info = torch.linalg.cholesky_ex(a + jitter[..., None, None] * eye)
        chol = torch.where(failed[..., None, None], retry, chol)
        failed = failed & (info > 0)
        if not bool(failed.any()):
            return chol
        jitter = jitter * 100.0
    return torch.where(failed[..., None, None], torch.full_like(chol, float("nan")), chol)


def chol_logdet(chol: torch.Tensor) -> torch.Tensor:
    """log |A| from its Cholesky factor: (..., n, n) -> (...)."""
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def psd_inverse(a: torch.Tensor) -> torch.Tensor:
    """A^-1 (symmetric) for positive-definite A (..., n, n)."""
    return symmetrize(torch.cholesky_inverse(psd_cholesky(a)))

