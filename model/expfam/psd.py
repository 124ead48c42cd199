"""Positive-definite linear algebra in one place: symmetrisation, Cholesky with a counted,
masked jitter retry, inverses and log-determinants. Shapes: (..., n, n)."""
from __future__ import annotations

import torch

#: the retry's jitter, relative to the mean absolute diagonal of the matrix that failed
JITTER = 1e-8


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """(A + A^T) / 2 over the last two dims."""
    return 0.5 * (a + a.mT)


def psd_cholesky(a: torch.Tensor, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factor L (L L^T = sym(A)) of (..., n, n) positive-definite matrices
    (`symmetric=True`: A is symmetric by construction and is used as it is), and which matrices
    needed a retry: a bool tensor (...) (`.sum()` counts them).

    The retry is by mask: A + jitter I is factored once more, with the jitter (JITTER times the mean
    absolute diagonal) nonzero only for the matrices whose first factorisation failed, and the retry
    is kept for exactly those. A matrix that fails again yields NaN, so the loss turns non-finite
    and the Trainer's nan_policy decides what happens. Nothing is read back to the host on CUDA or
    under torch.compile (the loops that call this can be captured whole); in eager mode on the CPU,
    where the factorisation's status is already in host memory, the retry is skipped when nothing
    failed (the same result, without the second factorisation).
    """
    if not symmetric:
        a = symmetrize(a)
    chol, info = torch.linalg.cholesky_ex(a)
    failed = info > 0
    if a.is_cpu and not torch.compiler.is_compiling() and not failed.any():
        return chol, failed
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    jitter = (failed * (JITTER * scale))[..., None, None]
    retry, info = torch.linalg.cholesky_ex(a + jitter * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device))
    chol = torch.where(failed[..., None, None], retry, chol)
    chol = torch.where((info > 0)[..., None, None], torch.nan, chol)
    return chol, failed


def chol_logdet(chol: torch.Tensor) -> torch.Tensor:
    """log |A| from its Cholesky factor: (..., n, n) -> (...)."""
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def psd_inverse(a: torch.Tensor) -> torch.Tensor:
    """A^-1 (symmetric) for positive-definite A (..., n, n)."""
    chol, _ = psd_cholesky(a)
    return symmetrize(torch.cholesky_inverse(chol))
