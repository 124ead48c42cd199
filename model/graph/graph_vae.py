"""GraphVAE and GraphLSTMVAE (GRAPHVAE.md sections 1, 2): N latent nodes z_n in R^d with learned, gated
parent edges m -> n (m > n; node N-1 is the root), a learned conditional prior shared with ladder-style
top-down inference, and a Bernoulli (or Gaussian) decoder of concat(z)."""
from __future__ import annotations

import inspect
import math
from typing import Any, Literal, Mapping, NamedTuple

import torch
from torch import nn

from base.base_model import BaseModel
from base.metric import Metric, PerExample, mean_of
from model.diagonal_gaussian import (bounded_log_variance, gaussian_kl, gaussian_log_prob, precision_weighted_fusion,
                                     reparameterized_log_prob)
from model.figures import log_image_grids
from model.graph.figures import log_graph
from model.graph.gates import EdgeGates, GateSchedule
from model.importance import iw_log_likelihood
from model.kl_warmup import KLWarmup
from model.likelihoods import LIKELIHOODS
from model.networks import ACTIVATIONS, StackedMLP, mlp
from model.registry import ARCHITECTURES

class Posterior(NamedTuple):
    """One top-down pass: z (..., N, d), KL per node (..., N), and log p(z | c) and log q(z | x, c) (...) when
    they were asked for (else None)."""
    z: torch.Tensor
    kl: torch.Tensor
    log_prior: torch.Tensor | None = None
    log_posterior: torch.Tensor | None = None


@ARCHITECTURES.register("GraphVAE")
class GraphVAE(GateSchedule, KLWarmup, BaseModel):
    """VAE over N nodes of dimension d with a learned DAG between them.

    Generative model: c_{m,n} ~ Bernoulli(sigmoid(a_{m,n})) (m > n), z_{N-1} ~ N(0, I),
    z_n | z_{>n}, c ~ N(TD_n(concat_m c_{m,n} z_m)), x ~ decoder(concat z). Inference: h = Enc(x),
    (mu~_n, sigma~_n) = BU_n(h) for every node (one batched op); q(z_root | x) = BU_root; q(z_n | ...) fuses
    TD_n's prior with BU_n by precision weighting, sampled root first. ELBO = E_c E_q[log p(x | z)
    - sum_n KL(q_n || p_n)], each KL analytic against the learned prior (the root's against N(0, I)).
    The gates are binary Concrete samples at temperature tau = max(tau_min, tau_init * tau_decay^epoch);
    from `fixed_gates_epoch` on (0: never) they are fixed to 1[sigmoid(a) > 1/2] and only the networks train.
    test.py evaluates with the hard gates.

    Batches: {"x": (B, *data_shape)}, flattened to (B, D).

    Args:
        data_shape: set by the framework.
        num_nodes, node_dim: N and d.
        hidden_dims: encoder trunk widths (Linear(-BatchNorm)-activation each); the decoder mirrors them.
        head_hidden_dims: hidden widths of the per-node bottom-up and top-down heads.
        activation, batch_norm: of the trunk, decoder and heads.
        likelihood: "bernoulli" (logits) or "gaussian".
        gate_sampling: "per_batch" (one gate sample per minibatch) or "per_example".
        straight_through: hard gates forward, relaxed gradients backward.
        gate_init_logit: initial a_{m,n}.
        tau_init, tau_decay, tau_min: the temperature schedule (per epoch).
        fixed_gates_epoch: epoch from which the gates are fixed to their hard values (0: never).
        kl_warmup_epochs: the KL's weight in the training loss rises linearly from 0 to 1 over this many epochs
            (0: always 1); `elbo` is always the true bound.
    """

    diagnostics = ("edges",)
    metrics = (
        Metric("elbo", mean_of("elbo"), "evidence lower bound on log p(x) with the hard gates, one posterior sample; "
               "nats per example"),
        Metric("iw_nll", mean_of("iw_nll"), "importance-weighted estimate of -log p(x | hard gates) with "
               "K = iw_samples; nats per example"),
    )

    def __init__(self, data_shape: tuple[int, ...], num_nodes: int = 5, node_dim: int = 16,
                 hidden_dims: list[int] = (512, 512, 256, 128), head_hidden_dims: list[int] = (128,),
                 activation: str = "elu", batch_norm: bool = True,
                 likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
                 gate_sampling: Literal["per_batch", "per_example"] = "per_batch", straight_through: bool = False,
                 gate_init_logit: float = 0.5, tau_init: float = 1.0, tau_decay: float = 0.9, tau_min: float = 0.3,
                 fixed_gates_epoch: int = 0, kl_warmup_epochs: int = 0):
        super().__init__()
        if num_nodes < 2 or node_dim < 1:
            raise ValueError(f"need num_nodes >= 2 and node_dim >= 1, got {num_nodes}, {node_dim}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {likelihood!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.data_shape = tuple(data_shape)
        self.unit = "image" if len(self.data_shape) == 3 else "point"
        self.num_nodes, self.node_dim = num_nodes, node_dim
        self.init_gate_schedule(gate_sampling, straight_through, tau_init, tau_decay, tau_min, fixed_gates_epoch)
        self.init_kl_warmup(kl_warmup_epochs)  # also counts the epochs for the temperature schedule
        self.likelihood = LIKELIHOODS[likelihood]
        obs_dim = math.prod(self.data_shape)
        hidden_dims, head_hidden_dims = list(hidden_dims), list(head_hidden_dims)
        self.encoder = nn.Sequential(mlp(obs_dim, hidden_dims[:-1], hidden_dims[-1], activation,
                                         batch_norm=batch_norm),
                                     *([nn.BatchNorm1d(hidden_dims[-1])] if batch_norm else []),
                                     ACTIVATIONS[activation]())
        self.bottom_up = StackedMLP(num_nodes, hidden_dims[-1], head_hidden_dims, 2 * node_dim, activation)
        self.init_top_down(head_hidden_dims, activation)
        self.decoder = mlp(num_nodes * node_dim, hidden_dims[::-1], self.likelihood.param_dim(obs_dim),
                           activation, batch_norm=batch_norm)
        self.gates = EdgeGates(num_nodes, gate_init_logit)

    # ---------------------------------------------------------------- top-down path (the learned prior)
    def init_top_down(self, head_hidden_dims: list[int], activation: str) -> None:
        """TD_n for the N-1 non-root nodes, stacked: input concat_m c_{m,n} z_m (N d, zeros for non-parents)."""
        self.top_down = StackedMLP(self.num_nodes - 1, self.num_nodes * self.node_dim, head_hidden_dims,
                                   2 * self.node_dim, activation)  # input rows [m d, (m+1) d) belong to z_m

    def init_prior_state(self, lead: tuple[int, ...], like: torch.Tensor) -> Any:
        """State carried along the top-down pass (none for per-node networks)."""
        return None

    def prior_step(self, n: int, parents: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """p(z_n | parents): the gated z_{n+1}, ..., z_{N-1} concatenated, (..., (N-1-n) d) -> (mean, log-variance)
        each (..., d), and the new state."""
        mean, raw = self.top_down.node(n, parents, skip_inputs=(n + 1) * self.node_dim).chunk(2, -1)
        return mean, bounded_log_variance(raw), state

    def parent_gates(self, gates: torch.Tensor) -> torch.Tensor:
        """The gates that multiply the parents fed to the top-down path."""
        return gates

    # ---------------------------------------------------------------- inference
    def top_down_pass(self, h: torch.Tensor, gates: torch.Tensor, num_samples: int | None = None,
                      log_probs: bool = False) -> Posterior:
        """Sample z root first given the trunk features h (B, F) and gates (N, N) or (B, N, N); with
        `num_samples` S, everything gets a leading sample dim (S, B, ...). `log_probs`: also log p(z | c)
        and log q(z | x, c). Per node only the prior and the fusion run in the loop; the
        bottom-up heads, the noise and the KLs are batched over nodes."""
        N, d = self.num_nodes, self.node_dim
        bu_mean, bu_raw = self.bottom_up(h, shared_input=True).chunk(2, -1)  # (B, N, d)
        bu_log_var = bounded_log_variance(bu_raw)
        bu_precision = torch.exp(-bu_log_var)
        lead = (len(h),) if num_samples is None else (num_samples, len(h))
        eps = torch.randn(*lead, N, d, device=h.device, dtype=h.dtype)
        parent_gates = self.parent_gates(gates)

        # unbind once: indexing node n in the loop would cost a full-size zero tensor per index in backward
        bu_means, bu_log_vars, bu_precisions = bu_mean.unbind(1), bu_log_var.unbind(1), bu_precision.unbind(1)
        noise = eps.unbind(-2)
        zero = torch.zeros_like(bu_means[-1]).expand(*lead, d)
        root = bu_means[-1] + torch.exp(0.5 * bu_log_vars[-1]) * noise[-1]
        sampled = [root]  # z_{N-1}, z_{N-2}, ... (root first)
        post_mean, post_log_var = [bu_means[-1].expand(*lead, d)], [bu_log_vars[-1].expand(*lead, d)]
        prior_mean, prior_log_var = [zero], [zero]
        state = self.init_prior_state(lead, h)
        for n in range(N - 2, -1, -1):
            parents = torch.stack(sampled[::-1], -2) * parent_gates[..., n + 1:, n, None]  # (..., N-1-n, d)
            mean_p, log_var_p, state = self.prior_step(n, parents.flatten(-2), state)
            mean, precision = precision_weighted_fusion(mean_p, torch.exp(-log_var_p), bu_means[n], bu_precisions[n])
            sampled.append(mean + torch.rsqrt(precision) * noise[n])
            post_mean.append(mean)
            post_log_var.append(-torch.log(precision))
            prior_mean.append(mean_p)
            prior_log_var.append(log_var_p)
        stack = lambda tensors: torch.stack(tensors[::-1], -2)  # noqa: E731  (..., N, d), node order
        z, mean_q, log_var_q, mean_p, log_var_p = map(stack, (sampled, post_mean, post_log_var, prior_mean,
                                                              prior_log_var))
        kl = gaussian_kl(mean_q, log_var_q, mean_p, log_var_p)  # (..., N)
        if not log_probs:
            return Posterior(z, kl)
        log_q = reparameterized_log_prob(log_var_q, eps).sum(-1)
        return Posterior(z, kl, gaussian_log_prob(z, mean_p, log_var_p).sum(-1), log_q)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., N, d) -> decoder output (..., param_dim)."""
        flat = z.flatten(-2)
        return self.decoder(flat.reshape(-1, flat.shape[-1])).reshape(*flat.shape[:-1], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"].flatten(1)
        gates = self.sample_gates(self.gates, len(x))
        post = self.top_down_pass(self.encoder(x), gates)
        log_px = self.likelihood.log_prob(self.decode(post.z), x)
        kl = post.kl.sum(-1)
        elbo = (log_px - kl).mean()
        node_kl = post.kl.detach().mean(0)
        return {
            "loss": -(log_px.mean() - self.kl_weight * kl.mean()) if self.training else -elbo,
            "elbo": elbo.detach(),
            "recon": log_px.detach().mean(),
            "kl": kl.detach().mean(),
            **{f"kl_node{n}": node_kl[n] for n in range(self.num_nodes)},
            "edges": self.gates.hard().sum(),
        }

    # ---------------------------------------------------------------- evaluation
    def iw_log_likelihood(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p(x | hard gates) estimated with K importance samples from q(z | x, c): (B,)."""
        h, gates = self.encoder(x), self.gates.hard()

        def log_weights(k: int) -> torch.Tensor:
            post = self.top_down_pass(h, gates, num_samples=k, log_probs=True)
            return self.likelihood.log_prob(self.decode(post.z), x) + post.log_prior - post.log_posterior

        return iw_log_likelihood(log_weights, num_samples, len(x))

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["x"].flatten(1)
        out = {}
        if "elbo" in metrics:
            post = self.top_down_pass(self.encoder(x), self.gates.hard())
            out["elbo"] = self.likelihood.log_prob(self.decode(post.z), x) - post.kl.sum(-1)
            out["kl_nodes"] = post.kl
        if "iw_nll" in metrics:
            out["iw_nll"] = -self.iw_log_likelihood(x, options["iw_samples"])
        return out

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """The KL per node (nats per example, with `elbo`), the edge probabilities sigmoid(a) (N x N,
        [m][n] = P(m -> n)) and the hard adjacency."""
        results: dict[str, Any] = {}
        if "kl_nodes" in per_example:
            results["kl_nodes"] = [round(float(v), 4) for v in per_example["kl_nodes"].double().mean(0)]
        results["edge_probs"] = [[round(float(p), 4) for p in row] for row in self.gates.probs().detach().cpu()]
        results["adjacency"] = self.gates.hard().int().cpu().tolist()
        return results

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Ancestral samples from the learned prior with the hard graph; decoder means (S, *data_shape)."""
        device = self.gates.logits.device
        gates = self.parent_gates(self.gates.hard())
        N, d = self.num_nodes, self.node_dim
        zs: list[torch.Tensor | None] = [None] * N
        zs[-1] = torch.randn(num_samples, d, device=device)
        state = self.init_prior_state((num_samples,), zs[-1])
        for n in range(N - 2, -1, -1):
            parents = torch.stack(zs[n + 1:], -2) * gates[n + 1:, n, None]
            mean, log_var, state = self.prior_step(n, parents.flatten(-2), state)
            zs[n] = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        return self.likelihood.mean(self.decode(torch.stack(zs, -2))).view(num_samples, *self.data_shape)

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """`{tag}/edge_probs` and `{tag}/adjacency` (the learned DAG); for images, `{tag}/reconstructions` and
        `{tag}/samples`."""
        log_graph(writer, tag, step, self.gates.probs(), self.gates.hard(), self.gates.mask,
                  name=f"Learned graph (node {self.num_nodes - 1} = root)")
        if len(self.data_shape) == 3:
            x = batch["x"][:12]
            post = self.top_down_pass(self.encoder(x.flatten(1)), self.gates.hard())
            recon = self.likelihood.mean(self.decode(post.z)).view_as(x)
            log_image_grids(writer, tag, step, reconstructions=(x, recon), samples=self.sample(24))


@ARCHITECTURES.register("GraphLSTMVAE")
class GraphLSTMVAE(GraphVAE):
    """GraphVAE whose per-node top-down networks are one LSTM shared across nodes, run root first: at node n it
    reads the parents (gated by c_{m,n} with `gated_inputs`, else all earlier-sampled nodes) and a per-node
    linear projection of its output gives p(z_n | ...). Ancestral sampling runs the same LSTM.

    Args (besides GraphVAE's): lstm_hidden: width of the LSTM; gated_inputs: multiply the parents by the gates.
    """

    def __init__(self, data_shape: tuple[int, ...], *, lstm_hidden: int = 128, gated_inputs: bool = True,
                 **kwargs: Any):
        self.lstm_hidden, self.gated_inputs = lstm_hidden, gated_inputs
        super().__init__(data_shape, **kwargs)

    def init_top_down(self, head_hidden_dims: list[int], activation: str) -> None:
        self.lstm = nn.LSTMCell(self.num_nodes * self.node_dim, self.lstm_hidden)
        self.top_down = StackedMLP(self.num_nodes - 1, self.lstm_hidden, [], 2 * self.node_dim, activation)

    def init_prior_state(self, lead: tuple[int, ...], like: torch.Tensor) -> Any:
        zeros = like.new_zeros(math.prod(lead), self.lstm_hidden)
        return zeros, zeros

    def prior_step(self, n: int, parents: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        lead = parents.shape[:-1]
        inputs = nn.functional.pad(parents, ((n + 1) * self.node_dim, 0))  # every node reads an (N d) input
        hidden, cell = self.lstm(inputs.reshape(-1, inputs.shape[-1]), state)
        mean, raw = self.top_down.node(n, hidden).reshape(*lead, -1).chunk(2, -1)
        return mean, bounded_log_variance(raw), (hidden, cell)

    def parent_gates(self, gates: torch.Tensor) -> torch.Tensor:
        return gates if self.gated_inputs else self.gates.mask


# the registry reads a class's signature to validate and build `arch.args`: GraphVAE's arguments plus the LSTM's
GraphLSTMVAE.__signature__ = inspect.signature(GraphVAE).replace(parameters=[
    *inspect.signature(GraphVAE).parameters.values(),
    *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(GraphLSTMVAE.__init__)
      .parameters.items() if name in ("lstm_hidden", "gated_inputs")],
])
