"""Observation likelihoods p(x | decoder output), factorised over the D observed dims.

Each takes decoder outputs `params` of shape (..., param_dim(D)) and data x of shape
(..., D) (x broadcasts, e.g. over importance samples) and returns log p(x) summed over D:
shape (...,). `mean(params)` is E[x] (..., D).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.diagonal_gaussian import bounded_log_variance, gaussian_log_prob


class BernoulliLikelihood:
    """Binary data; params are logits (..., D)."""

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
    """Real data; params are (mean, raw log-variance) (..., 2D) concatenated on the last dim.
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
    """Pen strokes x = (pen_lift, dx, dy, ...) (..., D): a Bernoulli pen lift (channel 0) and diagonal-Gaussian
    offsets (channels 1..D-1). params (..., 2D - 1): the pen-lift logit, then GaussianLikelihood's params of
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


class StudentTLikelihood:
    """Real data with heavy tails: an independent Student-t with `df` degrees of freedom per dim. params are
    (location, raw log squared scale) (..., 2D), as GaussianLikelihood's (mean, raw log-variance), with the same
    bound 10 tanh(raw / 10). A point that the location misses by r scales costs (df + 1) / 2 log(1 + r^2 / df)
    nats per dim instead of the Gaussian's r^2 / 2, so a few points far from every decoded mean cost tens of
    nats, not hundreds."""

    def __init__(self, df: float):
        if not df > 0:
            raise ValueError(f"Student-t degrees of freedom must be > 0, got {df}")
        self.df = float(df)

    @staticmethod
    def param_dim(obs_dim: int) -> int:
        return 2 * obs_dim

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, raw_log_scale2 = params.chunk(2, dim=-1)
        log_scale2 = bounded_log_variance(raw_log_scale2)
        nu = self.df
        z2 = (x - loc) ** 2 * torch.exp(-log_scale2)
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return (const - 0.5 * log_scale2 - (nu + 1) / 2 * torch.log1p(z2 / nu)).sum(-1)

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        """The location (the mean for df > 1)."""
        return params.chunk(2, dim=-1)[0]

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        loc, raw_log_scale2 = params.chunk(2, dim=-1)
        t = torch.distributions.StudentT(torch.tensor(self.df, dtype=loc.dtype, device=loc.device)).sample(loc.shape)
        return loc + torch.exp(0.5 * bounded_log_variance(raw_log_scale2)) * t


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood, "stroke": StrokeLikelihood}
