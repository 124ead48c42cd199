"""Shared network building blocks."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, activation: str = "relu",
        dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Linear(-BatchNorm)-activation(-dropout) layers of `hidden_dims`, then a linear output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), *([nn.BatchNorm1d(width)] if batch_norm else []),
                   ACTIVATIONS[activation]()]
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


class StackedMLP(nn.Module):
    """N independent MLPs (in_dim -> hidden_dims -> out_dim) with stacked weights, run as one batched
    matmul per layer: x (..., N, in_dim) -> (..., N, out_dim); `node(n, x)` runs MLP n alone on (..., in_dim).
    Initialised like nn.Linear (uniform +-1/sqrt(fan_in))."""

    def __init__(self, num_nets: int, in_dim: int, hidden_dims: list[int], out_dim: int, activation: str = "elu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dims = [in_dim, *hidden_dims, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            bound = fan_in ** -0.5
            self.weights.append(nn.Parameter(torch.empty(num_nets, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_nets, fan_out).uniform_(-bound, bound)))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """x (..., N, in_dim), or (..., in_dim) fed to every net with `shared_input` -> (..., N, out_dim)."""
        if shared_input:
            lead = x.shape[:-1]
            first, bias = self.weights[0], self.biases[0]
            num, fan_in, fan_out = first.shape
            h = torch.addmm(bias.flatten(), x.reshape(-1, fan_in), first.transpose(0, 1).reshape(fan_in, -1))
            h = h.view(-1, num, fan_out).transpose(0, 1)  # (N, rows, out)
            layers = list(zip(self.weights, self.biases))[1:]
            if layers:
                h = self.activation(h)
        else:
            lead = x.shape[:-2]
            h = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # (N, rows, in)
            layers = list(zip(self.weights, self.biases))
        for i, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight)
            if i < len(layers) - 1:
                h = self.activation(h)
        return h.transpose(0, 1).reshape(*lead, h.shape[0], h.shape[-1])

    def unbound_nets(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per net, its layers' (weight (in, out), bias (out,)), unbound from the stacked parameters once: for
        loops that run single nets many times (indexing a stacked parameter inside the loop would cost a
        full-size gradient buffer per index). Run one with `run_net`."""
        layers = [(weight.unbind(0), bias.unbind(0)) for weight, bias in zip(self.weights, self.biases)]
        return [[(weights[n], biases[n]) for weights, biases in layers] for n in range(len(self.weights[0]))]

    def run_net(self, layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
        """One net from `unbound_nets` on x (rows, in_dim) -> (rows, out_dim)."""
        for i, (weight, bias) in enumerate(layers):
            x = torch.addmm(bias, x, weight)
            if i < len(layers) - 1:
                x = self.activation(x)
        return x

    def node(self, n: int, x: torch.Tensor, skip_inputs: int = 0) -> torch.Tensor:
        """MLP n on x (..., in_dim - skip_inputs): its first `skip_inputs` inputs are taken to be zero."""
        h = x
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            weight = weight[n, skip_inputs:] if i == 0 else weight[n]
            h = torch.addmm(bias[n], h.reshape(-1, h.shape[-1]), weight).reshape(*h.shape[:-1], -1)
            if i < len(self.weights) - 1:
                h = self.activation(h)
        return h
