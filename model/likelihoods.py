"""Observation likelihoods p(x | decoder output), factorised over the P observed dims.

Each takes decoder outputs `params` of shape (..., param_dim(P)) and data x of shape
(..., P) (x broadcasts, e.g. over importance samples) and returns log p(x) summed over P:
shape (...,). `mean(params)` is E[x] (..., P).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.diagonal_gaussian import bounded_log_variance, gaussian_log_prob


class BernoulliLikelihood:
    """Binary data; params are logits (..., P)."""

    @staticmethod
    def param_dim(obs_dim: int) -> int:
        return obs_dim

    @staticmethod
    def log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x * params - F.softplus(params)).sum(-1)

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    @staticmethod
    def sample(params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class GaussianLikelihood:
    """Real data; params are (mean, raw log-variance) (..., 2P) concatenated on the last dim.
    The log-variance is bounded to (-10, 10) by 10 tanh(raw / 10)."""

    @staticmethod
    def param_dim(obs_dim: int) -> int:
        return 2 * obs_dim

    @staticmethod
    def log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, raw_log_var = params.chunk(2, dim=-1)
        return gaussian_log_prob(x, mean, bounded_log_variance(raw_log_var))

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return params.chunk(2, dim=-1)[0]

    @staticmethod
    def sample(params: torch.Tensor) -> torch.Tensor:
        mean, raw_log_var = params.chunk(2, dim=-1)
        return mean + torch.exp(0.5 * bounded_log_variance(raw_log_var)) * torch.randn_like(mean)


class StrokeLikelihood:
    """Pen strokes x = (pen_lift, dx, dy, ...) (..., P): a Bernoulli pen lift (channel 0) and diagonal-Gaussian
    offsets (channels 1..P-1). params (..., 2P - 1): the pen-lift logit, then GaussianLikelihood's params of
    the offsets."""

    @staticmethod
    def param_dim(obs_dim: int) -> int:
        return 2 * obs_dim - 1

    @staticmethod
    def log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (BernoulliLikelihood.log_prob(params[..., :1], x[..., :1])
                + GaussianLikelihood.log_prob(params[..., 1:], x[..., 1:]))

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sigmoid(params[..., :1]), GaussianLikelihood.mean(params[..., 1:])], -1)

    @staticmethod
    def sample(params: torch.Tensor) -> torch.Tensor:
        return torch.cat([BernoulliLikelihood.sample(params[..., :1]), GaussianLikelihood.sample(params[..., 1:])], -1)


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood, "stroke": StrokeLikelihood}
