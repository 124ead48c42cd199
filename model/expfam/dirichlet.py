"""Dirichlet over mixture weights pi with natural parameters a = alpha - 1 (..., K).

t(pi) = log pi; A(a) = sum_k lgamma(alpha_k) - lgamma(sum_k alpha_k);
E[log pi_k] = digamma(alpha_k) - digamma(sum alpha).
"""
from __future__ import annotations

import torch


def alpha_to_natural(alpha: torch.Tensor) -> torch.Tensor:
    return alpha - 1.0


def natural_to_alpha(natural: torch.Tensor) -> torch.Tensor:
    return natural + 1.0


def log_normalizer(natural: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (...)."""
    alpha = natural_to_alpha(natural)
    return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))


def expected_stats(natural: torch.Tensor) -> torch.Tensor:
    """E[log pi]: (..., K)."""
    alpha = natural_to_alpha(natural)
    return torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))


def point_stats(natural: torch.Tensor) -> torch.Tensor:
    """log pi at the point estimate pi = E[pi] = alpha / sum alpha: (..., K)."""
    alpha = natural_to_alpha(natural)
    return alpha.log() - alpha.sum(-1, keepdim=True).log()


def kl(natural_q: torch.Tensor, natural_p: torch.Tensor, expected_q: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) = <a_q - a_p, E_q[log pi]> - A(a_q) + A(a_p): (...). Pass `expected_q` =
    expected_stats(natural_q) when it is at hand."""
    expected = expected_stats(natural_q) if expected_q is None else expected_q
    inner = ((natural_q - natural_p) * expected).sum(-1)
    return inner - log_normalizer(natural_q) + log_normalizer(natural_p)
