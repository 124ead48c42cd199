"""Shared network building blocks."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, activation: str = "relu",
        dropout: float = 0.0) -> nn.Sequential:
    """Linear-activation(-dropout) layers of `hidden_dims`, then a linear output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class GaussianResNet(nn.Module):
    """x (..., in_dim) -> (mean, raw) each (..., out_dim), the two halves of a Gaussian's parameters:
    mean = mlp_mean(x) + W x and raw = mlp_raw(x) (a raw precision or log-variance, bounded by the caller).

    The MLP's weights and biases start at N(0, init_scale^2), so it starts close to zero, and the skip
    W is a random partial isometry without bias: the network starts as a random rotation (projection)
    of its input, which keeps the input's structure visible from the first step (the SVAE authors'
    Gaussian resnet).
    """

    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int, activation: str = "tanh",
                 init_scale: float = 1e-2):
        super().__init__()
        self.net = mlp(in_dim, hidden_dims, 2 * out_dim, activation)
        for param in self.net.parameters():
            nn.init.normal_(param, std=init_scale)
        self.skip = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.orthogonal_(self.skip.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(x).chunk(2, dim=-1)
        return mean + self.skip(x), raw
