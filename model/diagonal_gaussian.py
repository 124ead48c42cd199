"""Diagonal Gaussians given by (mean, log-variance) tensors (..., d): densities, KLs and products,
each reduced over the last dim."""
from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def bounded_log_variance(raw: torch.Tensor) -> torch.Tensor:
    """10 tanh(raw / 10): log-variances in (-10, 10)."""
    return 10.0 * torch.tanh(raw / 10.0)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(log_var)) summed over the last dim."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)).sum(-1)


def reparameterized_log_prob(log_var: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(log_var)) at z = mean + exp(log_var / 2) noise, from the noise: summed over the
    last dim."""
    return -0.5 * (LOG_2PI + log_var + noise ** 2).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def gaussian_kl(mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor,
                log_var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, diag var_q) || N(mean_p, diag var_p)) summed over the last dim."""
    return 0.5 * (log_var_p - log_var_q + (torch.exp(log_var_q) + (mean_q - mean_p) ** 2) * torch.exp(-log_var_p)
                  - 1.0).sum(-1)


def gaussian_kl_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) summed over the last dim."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


def precision_weighted_fusion(mean_a: torch.Tensor, precision_a: torch.Tensor, mean_b: torch.Tensor,
                              precision_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised product of two diagonal Gaussians: precision = precision_a + precision_b and
    mean = (mean_a precision_a + mean_b precision_b) / precision. Returns (mean, precision)."""
    precision = precision_a + precision_b
    return torch.addcmul(mean_a * precision_a, mean_b, precision_b) / precision, precision
