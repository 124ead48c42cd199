"""The graphical-model interface of the structured VAEs (SVAE.md sections 1-2).

A `GraphicalModel` is the conjugate part of an SVAE: it owns the global factors q(theta) (exponential
families in natural parameters, float64 buffers, by name), turns them into the potentials that local
inference needs, and runs local inference given the recognition network's Gaussian node potentials.
`StructuredVAE` (structured_vae.py) wires any of them between an encoder and a decoder, and applies
the natural-gradient SVI step of every global factor from the statistics that local inference returns.

Conventions: B examples; "nodes" are the latent variables of one example (none for a mixture, T for a
chain), n the latent dimension. Node potentials psi(x) = -1/2 x^T diag(node_J) x + node_h^T x, node_J and
node_h (B, *nodes, n). A global factor `name` with fields f1, f2, ... lives in the buffers
`prior_<name>_<f>` and `q_<name>_<f>` (`prior_<name>` / `q_<name>` for a one-tensor family), and the
statistics for its SVI step come under the same `<name>_<f>` keys, plus `count`, the number of examples
they were summed over.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import torch
from torch import nn

from model.expfam import dirichlet, mniw, niw


@dataclass(frozen=True)
class ConjugateFamily:
    """What the SVAE core needs of an exponential family that serves as a global factor.

    Args:
        natural_type: the NamedTuple of its natural parameters, or None for one tensor.
        expected_stats: eta -> E_q[t(theta)] (what local inference uses in expectation).
        point_stats: eta -> t(theta-bar) at the point estimate (for plug-in likelihoods: iw_nll).
        kl: (eta_q, eta_p, expected_stats(eta_q)) -> KL(q || p) with the family's batch shape.
    """

    natural_type: type[NamedTuple] | None
    expected_stats: Callable[[Any], Any]
    point_stats: Callable[[Any], Any]
    kl: Callable[[Any, Any, Any], torch.Tensor]

    @property
    def fields(self) -> tuple[str | None, ...]:
        return (None,) if self.natural_type is None else self.natural_type._fields

    def unpack(self, natural: Any) -> tuple[torch.Tensor, ...]:
        return (natural,) if self.natural_type is None else tuple(natural)

    def pack(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        return tensors[0] if self.natural_type is None else self.natural_type(*tensors)


DIRICHLET = ConjugateFamily(None, dirichlet.expected_stats, dirichlet.point_stats, dirichlet.kl)
NIW = ConjugateFamily(niw.NIWNatural, niw.expected_stats, niw.point_stats, niw.kl)
MNIW = ConjugateFamily(mniw.MNIWNatural, mniw.expected_stats, mniw.point_stats, mniw.kl)


class LocalPosterior(Protocol):
    """What `StructuredVAE` reads of any graphical model's local posterior q(local latents):
    reparameterised samples (S, B, *nodes, n) (None when none were asked for), E_q[x] (B, *nodes, n), the
    local KL(q || p(local latents | theta)) in expectation over q(theta), summed over nodes (B,), and the
    number of jitter retries of its Cholesky factorisations (a () tensor)."""

    samples: torch.Tensor | None
    mean: torch.Tensor
    kl: torch.Tensor
    retries: torch.Tensor


def statistic_key(name: str, field: str | None) -> str:
    return name if field is None else f"{name}_{field}"


class GraphicalModel(nn.Module):
    """Global factors by name, plus local inference (subclasses implement the abstract methods)."""

    #: n, the dimension of each latent node
    latent_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.families: dict[str, ConjugateFamily] = {}

    # ---------------------------------------------------------------- global factors
    def add_global_factor(self, name: str, family: ConjugateFamily, prior: Any, init: Any = None) -> None:
        """Register a factor's prior and q (initialised at `init`, default the prior) as float64
        buffers (clones: q is updated in place)."""
        self.families[name] = family
        init = prior if init is None else init
        for field, p, q in zip(family.fields, family.unpack(prior), family.unpack(init)):
            key = statistic_key(name, field)
            self.register_buffer(f"prior_{key}", p.clone())
            self.register_buffer(f"q_{key}", q.clone())

    def natural(self, name: str, prior: bool = False) -> Any:
        """The natural parameters of q (or of the prior) of factor `name`."""
        family = self.families[name]
        which = "prior" if prior else "q"
        return family.pack(tuple(getattr(self, f"{which}_{statistic_key(name, f)}") for f in family.fields))

    def global_stats(self, point: bool = False) -> dict[str, Any]:
        """Per factor: E_q[t(theta)], or with `point` t(theta-bar) at the point estimate."""
        return {name: (family.point_stats if point else family.expected_stats)(self.natural(name))
                for name, family in self.families.items()}

    def global_kl(self, expected: dict[str, Any]) -> torch.Tensor:
        """KL(q(theta) || p(theta)) (scalar, nats), given `global_stats()`."""
        return sum(family.kl(self.natural(name), self.natural(name, prior=True), expected[name]).sum()
                   for name, family in self.families.items())

    @torch.no_grad()
    def natural_gradient_step(self, statistics: dict[str, torch.Tensor], num_train: int, rho: float,
                              taken: torch.Tensor | None = None) -> None:
        """SVI: eta <- eta + rho (eta0 + (N / count) stats - eta) for every global factor, in place, from the
        statistics of `count` examples (summed over the batch, every replica and every rank). For
        0 < rho <= 1 a convex combination of valid natural parameters, so q stays valid. Where the 0-d bool
        `taken` is False (a skipped step), every eta stays exactly as it was (decided on the device)."""
        scale = num_train / statistics["count"]
        for name, family in self.families.items():
            for field in family.fields:
                key = statistic_key(name, field)
                q, prior = getattr(self, f"q_{key}"), getattr(self, f"prior_{key}")
                target = prior + scale * statistics[key]
                q.lerp_(target if taken is None else torch.where(taken, target, q), rho)

    # ---------------------------------------------------------------- local inference (per model)
    def potentials(self, stats: dict[str, Any]) -> Any:
        """What local inference needs of the globals, from `global_stats()` (expected or point)."""
        raise NotImplementedError

    def infer(self, potentials: Any, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: torch.Tensor | None = None) -> LocalPosterior:
        """Local posterior of a batch given the node potentials (B, *nodes, n), with `num_samples`
        reparameterised samples. `mask` (B, *nodes) bool: the observed nodes (None: all); an unobserved node
        has zero node potentials, and a chain ends at its last observed node. Differentiable in the node
        potentials; never changes state."""
        raise NotImplementedError

    def statistics(self, post: LocalPosterior) -> dict[str, torch.Tensor]:
        """Expected sufficient statistics of every global factor (`<name>_<field>` keys, summed over the
        batch, detached) and `count`."""
        raise NotImplementedError

    def posterior_log_prob(self, post: LocalPosterior, x: torch.Tensor) -> torch.Tensor:
        """log q(x) of samples x (S, B, *nodes, n) under the local posterior's continuous part: (S, B)."""
        raise NotImplementedError

    def prior_log_prob(self, potentials: Any, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | theta) of x (S, B, *nodes, n), discrete latents summed out exactly, the model cut as
        `infer` cuts it for `mask`: (S, B)."""
        raise NotImplementedError

    def diagnostics(self, post: LocalPosterior) -> dict[str, torch.Tensor]:
        """Scalars logged with the training outputs (e.g. the mean-field sweeps)."""
        return {}
