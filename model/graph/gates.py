"""Learned edge gates between N latent nodes: c_{m,n} ~ Bernoulli(sigmoid(a_{m,n})) for m > n (node m can
be a parent of node n), relaxed with the binary Concrete distribution."""
from __future__ import annotations

import torch
from torch import nn

#: the relaxed gate's logit (a + L) / tau is clipped to +-this, so gates stay strictly inside (0, 1)
MAX_GATE_LOGIT = 15.0


class EdgeGates(nn.Module):
    """Gate logits a as one (N, N) parameter; only the strictly lower triangle (m > n) is used.

    Args:
        num_nodes: N.
        init_logit: initial a_{m,n} (0: every edge starts at probability 1/2).
    """

    def __init__(self, num_nodes: int, init_logit: float = 0.0):
        super().__init__()
        mask = torch.ones(num_nodes, num_nodes).tril(-1)
        self.register_buffer("mask", mask)
        self.logits = nn.Parameter(torch.full((num_nodes, num_nodes), float(init_logit)) * mask)

    def probs(self) -> torch.Tensor:
        """sigmoid(a) on the allowed edges, 0 elsewhere: (N, N), [m, n] = P(m -> n)."""
        return torch.sigmoid(self.logits) * self.mask

    def hard(self) -> torch.Tensor:
        """1[sigmoid(a) > 1/2] on the allowed edges: (N, N), no gradient."""
        return (self.logits.detach() > 0).to(self.mask.dtype) * self.mask

    def relaxed(self, shape: tuple[int, ...], tau: float, straight_through: bool = False) -> torch.Tensor:
        """Binary Concrete samples c = sigmoid((a + L) / tau), L ~ Logistic(0, 1), computed in logit space:
        (*shape, N, N). With `straight_through`, the forward value is the hard 1[c > 1/2] and the gradient is
        the relaxed one's."""
        u = torch.rand(*shape, *self.logits.shape, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)
        gates = torch.sigmoid(((self.logits + noise) / tau).clamp(-MAX_GATE_LOGIT, MAX_GATE_LOGIT))
        if straight_through:
            gates = (gates > 0.5).to(gates.dtype) + gates - gates.detach()
        return gates * self.mask
