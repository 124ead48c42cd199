"""Brute-force references shared by the inference tests: the Gaussian chain as one dense Gaussian."""
from __future__ import annotations

import math

import torch


def embed_pair(J11, J12, J22, t: int, T: int, n: int) -> torch.Tensor:
    """The pair precision of step t inside a (..., T n, T n) matrix."""
    out = J11.new_zeros(*J11.shape[:-2], T * n, T * n)
    a, b = slice(t * n, (t + 1) * n), slice((t + 1) * n, (t + 2) * n)
    out[..., a, a], out[..., a, b], out[..., b, a], out[..., b, b] = J11, J12, J12.mT, J22
    return out


def dense_chain(init_J, init_h, init_const, J11, J12, J22, pair_const, node_J, node_h):
    """The Gaussian chain with per-step pair potentials J11, J12, J22 (B, T-1, n, n) and pair_const (B, T-1) as
    one (T n)-dimensional Gaussian, by inverting its block-tridiagonal precision:
    (log Z (B,), mean (B, T n), covariance (B, T n, T n))."""
    B, T, n = node_h.shape
    J = torch.diag_embed(node_J.reshape(B, T * n))
    h = node_h.reshape(B, T * n)
    J = J + torch.nn.functional.pad(init_J, (0, (T - 1) * n, 0, (T - 1) * n))
    h = h + torch.nn.functional.pad(init_h, (0, (T - 1) * n))
    for t in range(T - 1):
        J = J + embed_pair(J11[:, t], J12[:, t], J22[:, t], t, T, n)
    cov = torch.linalg.inv(J)
    mean = (cov @ h.unsqueeze(-1)).squeeze(-1)
    log_z = (0.5 * (h * mean).sum(-1) - 0.5 * torch.logdet(J) + 0.5 * T * n * math.log(2 * math.pi)
             + init_const + pair_const.sum(-1))
    return log_z, mean, cov


def dense_joint(prior, node_J: torch.Tensor, node_h: torch.Tensor):
    """dense_chain of an LDS chain whose pair potentials are the same at every step: `prior` is an LDSPotentials
    (init_J, init_h, init_const, J11, J12, J22, pair_const) with pair potentials (n, n) or (B, n, n) and
    pair_const () or (B,)."""
    B, T, n = node_h.shape
    steps = lambda m: m.unsqueeze(-3).expand(B, T - 1, n, n)  # noqa: E731
    return dense_chain(prior.init_J, prior.init_h, prior.init_const, steps(prior.J11), steps(prior.J12),
                       steps(prior.J22), prior.pair_const.unsqueeze(-1).expand(B, T - 1), node_J, node_h)
