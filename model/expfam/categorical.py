"""Categorical over K labels with natural parameters eta = logits (..., K).

t(z) = one-hot(z); A(eta) = logsumexp(eta); E[t] = softmax(eta).
"""
from __future__ import annotations

import torch


def log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over K: (..., K) -> (...)."""
    return torch.logsumexp(logits, -1)


def expected_stats(logits: torch.Tensor) -> torch.Tensor:
    """Label probabilities softmax(logits): (..., K)."""
    return torch.softmax(logits, -1)


def kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = <eta_q - eta_p, E_q[t]> - A(eta_q) + A(eta_p): (...)."""
    inner = ((logits_q - logits_p) * expected_stats(logits_q)).sum(-1)
    return inner - log_normalizer(logits_q) + log_normalizer(logits_p)
