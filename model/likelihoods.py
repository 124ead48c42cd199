"""Observation likelihoods p(x | decoder output), factorised over the P observed dims.

Each takes decoder outputs `params` of shape (..., P * num_params) and data x of
shape (..., P) and returns log p(x) summed over P: shape (...,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BernoulliLikelihood:
    """Binary data; params are logits (..., P) (x broadcasts, e.g. over importance samples)."""

    num_params = 1

    @staticmethod
    def log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x * params - F.softplus(params)).sum(-1)

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood:
    """Real data; params are (mean, raw log-variance) concatenated on the last dim.
    The log-variance is bounded to (-10, 10) by 10 tanh(raw / 10)."""

    num_params = 2

    @staticmethod
    def log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, raw_logvar = params.chunk(2, dim=-1)
        logvar = 10.0 * torch.tanh(raw_logvar / 10.0)
        return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(-1)

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return params.chunk(2, dim=-1)[0]


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}
