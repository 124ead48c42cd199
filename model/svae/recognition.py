"""Recognition networks that output conjugate Gaussian node potentials."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.networks import GaussianResNet

PRECISION_BOUNDS = ("softplus", "exp_tanh")


class GaussianRecognition(nn.Module):
    """y (..., D) -> diagonal Gaussian node potentials psi(x) = -1/2 x^T diag(J) x + h^T x, in float64.

    A GaussianResNet outputs a mean and a raw precision per latent dim; h = J * mean and J is bounded:
    "softplus": J = min(softplus(raw), max_precision) + min_precision;
    "exp_tanh": J = exp(10 tanh(raw / 10)), in (e^-10, e^10) (the SVAE authors' bound).
    Returns J (..., d) > 0 and h (..., d).
    """

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dims: list[int], activation: str = "tanh",
                 init_scale: float = 1e-2, min_precision: float = 1e-4, max_precision: float = 1e4,
                 precision_bound: str = "softplus"):
        super().__init__()
        if not 0 < min_precision < max_precision:
            raise ValueError(f"need 0 < min_precision < max_precision, got {min_precision}, {max_precision}")
        if precision_bound not in PRECISION_BOUNDS:
            raise ValueError(f"precision_bound must be one of {PRECISION_BOUNDS}, got {precision_bound!r}")
        self.net = GaussianResNet(obs_dim, hidden_dims, latent_dim, activation, init_scale)
        self.min_precision = min_precision
        self.max_precision = max_precision
        self.precision_bound = precision_bound

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_precision = (t.double() for t in self.net(y))
        if self.precision_bound == "exp_tanh":
            precision = torch.exp(10.0 * torch.tanh(raw_precision / 10.0))
        else:
            precision = F.softplus(raw_precision).clamp(max=self.max_precision) + self.min_precision
        return precision, precision * mean.clamp(-1e6, 1e6)
