"""Learned edge gates between N latent nodes, c_{m,n} ~ Bernoulli(sigmoid(a_{m,n})) for edge m -> n, relaxed
with the binary Concrete distribution; and the temperature schedule shared by the graph VAEs."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: the relaxed gate's logit (a + L) / tau is clipped to +-this, so gates stay strictly inside (0, 1)
MAX_GATE_LOGIT = 15.0


class EdgeGates(nn.Module):
    """Gate logits a as one (N, N) parameter, [m, n] for edge m -> n, used where the mask allows an edge.

    Args:
        num_nodes: N.
        init_logit: initial a_{m,n} (0: every edge starts at probability 1/2).
        edges: "lower": only m > n (a DAG within a step, node N-1 the root); "all": every pair, m = n included
            (edges from the previous step's nodes).
    """

    def __init__(self, num_nodes: int, init_logit: float = 0.0, edges: Literal["lower", "all"] = "lower"):
        super().__init__()
        if edges not in ("lower", "all"):
            raise ValueError(f"edges must be 'lower' or 'all', got {edges!r}")
        mask = torch.ones(num_nodes, num_nodes)
        if edges == "lower":
            mask = mask.tril(-1)
        self.register_buffer("mask", mask)
        self.logits = nn.Parameter(torch.full((num_nodes, num_nodes), float(init_logit)) * mask)

    def probs(self) -> torch.Tensor:
        """sigmoid(a) on the allowed edges, 0 elsewhere: (N, N), [m, n] = P(m -> n)."""
        return torch.sigmoid(self.logits) * self.mask

    def hard(self) -> torch.Tensor:
        """1[sigmoid(a) > 1/2] on the allowed edges: (N, N), no gradient."""
        return (self.logits.detach() > 0).to(self.mask.dtype) * self.mask

    def relaxed(self, shape: tuple[int, ...], tau: float | torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Binary Concrete samples c = sigmoid((a + L) / tau), L ~ Logistic(0, 1), computed in logit space:
        (*shape, N, N). With `straight_through`, the forward value is the hard 1[c > 1/2] and the gradient is
        the relaxed one's."""
        u = torch.rand(*shape, *self.logits.shape, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)
        gates = torch.sigmoid(((self.logits + noise) / tau).clamp(-MAX_GATE_LOGIT, MAX_GATE_LOGIT))
        if straight_through:
            gates = (gates > 0.5).to(gates.dtype) + gates - gates.detach()
        return gates * self.mask


class GateSchedule:
    """Mixin for a graph VAE (with KLWarmup, whose `epochs_done` it reads): the temperature
    tau = max(tau_min, tau_init * tau_decay^epoch), gate sampling for training steps, the second phase
    that fixes the gates to their hard values from `fixed_gates_epoch` on (0: never), and the parameter
    groups "gates" (every EdgeGates' logits) and "networks" (everything else)."""

    epochs_done: int

    def init_gate_schedule(self, gate_sampling: str, straight_through: bool, tau_init: float, tau_decay: float,
                           tau_min: float, fixed_gates_epoch: int) -> None:
        if gate_sampling not in ("per_batch", "per_example"):
            raise ValueError(f"gate_sampling must be 'per_batch' or 'per_example', got {gate_sampling!r}")
        if not 0 < tau_min <= tau_init or not 0 < tau_decay <= 1:
            raise ValueError(f"need 0 < tau_min <= tau_init and 0 < tau_decay <= 1, got {tau_min}, {tau_init}, "
                             f"{tau_decay}")
        self.gate_sampling, self.straight_through = gate_sampling, straight_through
        self.tau_init, self.tau_decay, self.tau_min = tau_init, tau_decay, tau_min
        self.fixed_gates_epoch = fixed_gates_epoch
        self.register_buffer("tau", torch.zeros((), dtype=torch.float64), persistent=False)  # this epoch
        #: whether the gates are fixed to their hard values this epoch (a compiled step recompiles once when it flips)
        self.gates_fixed = False

    def update_schedule(self) -> None:
        super().update_schedule()
        self.tau.fill_(max(self.tau_min, self.tau_init * self.tau_decay ** self.epochs_done))
        self.gates_fixed = 0 < self.fixed_gates_epoch <= self.epochs_done

    def schedule_values(self) -> dict[str, float]:
        return {**super().schedule_values(), "tau": self.tau.item()}

    def sample_gates(self, gates: EdgeGates, batch_size: int) -> torch.Tensor:
        """Gates for a training step: (N, N), or (B, N, N) with per-example sampling."""
        if self.gates_fixed:
            return gates.hard()
        shape = (batch_size,) if self.gate_sampling == "per_example" else ()
        return gates.relaxed(shape, self.tau, self.straight_through)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """"gates" (the edge logits, e.g. with their own learning rate) and "networks" (everything else)."""
        gate_logits = [m.logits for m in self.modules() if isinstance(m, EdgeGates)]
        ids = {id(p) for p in gate_logits}
        networks = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return {"gates": gate_logits, "networks": networks}
