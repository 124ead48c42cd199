"""The graphical-model interface of the structured VAEs (SVAE.md sections 1-2).

A `GraphicalModel` is the conjugate part of an SVAE: it owns the global factors q(theta) (exponential
families in natural parameters, float64 buffers), turns them into the potentials that local inference needs,
and runs local inference given the recognition network's Gaussian node potentials. `StructuredVAE`
(structured_vae.py) wires any of them between an encoder and a decoder, and applies the natural-gradient SVI
step of every global factor from the statistics that local inference returns.

Conventions: B examples; "nodes" are the latent variables of one example (none for a mixture, T for a
chain), n the latent dimension. Node potentials psi(x) = -1/2 x^T diag(node_J) x + node_h^T x, node_J and
node_h (B, *nodes, n).

Statistics are typed: a model declares `Statistics`, a NamedTuple with one field per global factor (its value
has the structure of that factor's natural parameters: a tensor, or the family's NamedTuple, e.g.
`NIWNatural`), `count` (the number of examples they were summed over) and any extra fields of its own.
`add_global_factor` refuses a factor that `Statistics` has no field for, so a misspelt name fails when the
model is built.
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


def _buffer_suffix(name: str, field: str | None) -> str:
    """Factor `name`'s field as a buffer-name suffix: `prior_<suffix>`, `q_<suffix>` (checkpoint keys)."""
    return name if field is None else f"{name}_{field}"


class GraphicalModel(nn.Module):
    """Global factors by name, plus local inference (subclasses implement the abstract methods)."""

    #: n, the dimension of each latent node
    latent_dim: int
    #: the NamedTuple that `statistics` returns: one field per global factor, `count`, and extra fields
    Statistics: type[NamedTuple]

    def __init__(self) -> None:
        super().__init__()
        self.families: dict[str, ConjugateFamily] = {}

    # ---------------------------------------------------------------- global factors
    def add_global_factor(self, name: str, family: ConjugateFamily, prior: Any, init: Any = None) -> None:
        """Register a factor's prior and q (initialised at `init`, default the prior) as float64 buffers
        `prior_<name>_<field>` and `q_<name>_<field>` (clones: q is updated in place)."""
        if name not in self.Statistics._fields:
            raise TypeError(f"{type(self).__name__}: global factor {name!r} has no field in "
                            f"{self.Statistics.__name__} {self.Statistics._fields}")
        self.families[name] = family
        init = prior if init is None else init
        for field, p, q in zip(family.fields, family.unpack(prior), family.unpack(init)):
            suffix = _buffer_suffix(name, field)
            self.register_buffer(f"prior_{suffix}", p.clone())
            self.register_buffer(f"q_{suffix}", q.clone())

    def _buffers_of(self, name: str, prior: bool = False) -> tuple[torch.Tensor, ...]:
        which = "prior" if prior else "q"
        return tuple(getattr(self, f"{which}_{_buffer_suffix(name, f)}") for f in self.families[name].fields)

    def natural(self, name: str, prior: bool = False) -> Any:
        """The natural parameters of q (or of the prior) of factor `name`."""
        return self.families[name].pack(self._buffers_of(name, prior))

    @torch.no_grad()
    def set_natural(self, name: str, value: Any, prior: bool = False) -> None:
        """Overwrite q (or the prior) of factor `name` (in place) with natural parameters of its structure."""
        for buffer, new in zip(self._buffers_of(name, prior), self.families[name].unpack(value)):
            buffer.copy_(new)

    def global_stats(self, point: bool = False) -> dict[str, Any]:
        """Per factor: E_q[t(theta)], or with `point` t(theta-bar) at the point estimate."""
        return {name: (family.point_stats if point else family.expected_stats)(self.natural(name))
                for name, family in self.families.items()}

    def global_kl(self, expected: dict[str, Any]) -> torch.Tensor:
        """KL(q(theta) || p(theta)) (scalar, nats), given `global_stats()`."""
        return sum(family.kl(self.natural(name), self.natural(name, prior=True), expected[name]).sum()
                   for name, family in self.families.items())

    @torch.no_grad()
    def natural_gradient_step(self, statistics: NamedTuple, num_train: int, rho: float,
                              taken: torch.Tensor | None = None) -> None:
        """SVI: eta <- eta + rho (eta0 + (N / count) stats - eta) for every global factor, in place, from the
        `Statistics` of `count` examples (summed over the batch, every replica and every rank). For
        0 < rho <= 1 a convex combination of valid natural parameters, so q stays valid. Where the 0-d bool
        `taken` is False (a skipped step), every eta stays exactly as it was (decided on the device)."""
        scale = num_train / statistics.count
        for name, family in self.families.items():
            stats = family.unpack(getattr(statistics, name))
            for q, prior, stat in zip(self._buffers_of(name), self._buffers_of(name, prior=True), stats):
                target = prior + scale * stat
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

    def statistics(self, post: LocalPosterior) -> NamedTuple:
        """`Statistics`: the expected sufficient statistics of every global factor (summed over the batch,
        detached) and `count`."""
        raise NotImplementedError

    def posterior_log_prob(self, post: LocalPosterior, x: torch.Tensor) -> torch.Tensor:
        """log q(x) of samples x (S, B, *nodes, n) under the local posterior's continuous part: (S, B)."""
        raise NotImplementedError

    def prior_log_prob(self, potentials: Any, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | theta) of x (S, B, *nodes, n), discrete latents summed out exactly, the model cut as
        `infer` cuts it for `mask`: (S, B)."""
        raise NotImplementedError

    def forecast(self, post: LocalPosterior, horizon: int, num_samples: int) -> torch.Tensor:
        """For models over time: `num_samples` sampled continuations of the latents after the last node of
        `post` (a posterior with at least that many samples) for `horizon` more nodes, (S, B, H, n)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict")

    def diagnostics(self, post: LocalPosterior) -> dict[str, torch.Tensor]:
        """Scalars logged with the training outputs (e.g. the mean-field sweeps)."""
        return {}
