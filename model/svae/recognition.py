"""Recognition networks that output conjugate Gaussian node potentials."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.networks import GaussianResNet


class GaussianRecognition(nn.Module):
    """y (B, P) -> diagonal Gaussian node potentials psi(x) = -1/2 x^T diag(J) x + h^T x, in float64.

    A GaussianResNet outputs a mean and a raw precision per latent dim; the precision is bounded,
    J = min(softplus(raw), max_precision) + min_precision, and h = J * mean.
    Returns J (B, d) > 0 and h (B, d).
    """

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dims: list[int], activation: str = "tanh",
                 init_scale: float = 1e-2, min_precision: float = 1e-4, max_precision: float = 1e4):
        super().__init__()
        if not 0 < min_precision < max_precision:
            raise ValueError(f"need 0 < min_precision < max_precision, got {min_precision}, {max_precision}")
        self.net = GaussianResNet(obs_dim, hidden_dims, latent_dim, activation, init_scale)
        self.min_precision = min_precision
        self.max_precision = max_precision

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_precision = (t.double() for t in self.net(y))
        precision = F.softplus(raw_precision).clamp(max=self.max_precision) + self.min_precision
        return precision, precision * mean.clamp(-1e6, 1e6)
