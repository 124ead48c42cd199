"""RecurrentGraphVAE (GRAPHVAE.md section 3): a GraphVAE at every step of a sequence, with learned edges within
a step and from the previous step's nodes, and a deterministic recurrent state as in a VRNN."""
from __future__ import annotations

from typing import Any, Callable, Literal, Mapping, NamedTuple

import torch
from torch import nn

from base.base_model import BaseModel
from base.metric import Metric, PerExample, mean_of, ratio_of_sums
from model.diagonal_gaussian import bounded_log_variance, gaussian_kl, gaussian_log_prob, reparameterized_log_prob
from model.figures import log_sequences
from model.graph.figures import log_graph
from model.graph.gates import EdgeGates, GateSchedule
from model.importance import iw_log_likelihood
from model.kl_warmup import KLWarmup
from model.likelihoods import LIKELIHOODS, StrokeLikelihood
from model.networks import ACTIVATIONS, StackedMLP, mlp
from model.registry import ARCHITECTURES
from utils.errors import ConfigError, DataError


def fold_gates(weight: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Gate the input blocks of N stacked linear layers and lay the layers side by side.

    weight (N, M d, h): rows [m d, (m+1) d) of layer n read node m; gates (..., M, N), [m, n] gating m -> n.
    Returns W (..., M d, N h) with z @ W = concat_n (concat_m gates[m, n] z_m) @ weight[n] for z (..., M d).
    """
    num_layers, rows, width = weight.shape
    num_inputs = gates.shape[-2]
    blocks = weight.view(num_layers, num_inputs, rows // num_inputs, width).permute(1, 2, 0, 3)  # (M, d, N, h)
    return (blocks * gates[..., :, None, :, None]).reshape(*gates.shape[:-2], rows, num_layers * width)


def add_vecmat(acc: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """acc + z @ weight for rows z (R, K), with one weight (K, J) or one per row (R, K, J); acc (R, J)."""
    if weight.dim() == 2:
        return torch.addmm(acc, z, weight)
    return torch.baddbmm(acc.unsqueeze(1), z.unsqueeze(1), weight).squeeze(1)


class FusedGaussianSample(torch.autograd.Function):
    """One node's sample from the fusion of its prior head with its bottom-up Gaussian, as one autograd node (the
    loop over steps and nodes runs it T N times; a dozen small autograd nodes each would cost more than the
    arithmetic).

    Inputs: head (R, 2d) = (mean_p, raw) with log var_p = 10 tanh(raw / 10); bottom-up mean * precision and
    precision (R, d) (zeros: the prior alone); noise (R, d). Outputs z = mean + precision^-1/2 noise and the
    fused mean and precision: precision = var_p^-1 + precision_bu, mean = (mean_p var_p^-1 + (mean *
    precision)_bu) / precision. The backward pass is written out (checked against autograd in the tests). Under
    CUDA autocast it runs in float32.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, head: torch.Tensor, bu_weighted_mean: torch.Tensor, bu_precision: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean_p, raw = head.chunk(2, -1)
        squashed = torch.tanh(raw * 0.1)
        precision_p = torch.exp(squashed * -10.0)
        precision = precision_p + bu_precision
        mean = torch.addcmul(bu_weighted_mean, mean_p, precision_p) / precision
        std = torch.rsqrt(precision)
        ctx.save_for_backward(mean_p, squashed, precision_p, precision, mean, std, noise)
        return torch.addcmul(mean, std, noise), mean, precision

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z, grad_mean, grad_precision):
        mean_p, squashed, precision_p, precision, mean, std, noise = ctx.saved_tensors
        zero = torch.zeros_like(mean)
        grad_z = zero if grad_z is None else grad_z
        grad_mean = grad_z if grad_mean is None else grad_mean + grad_z
        grad_precision = zero if grad_precision is None else grad_precision
        # z = mean + std noise, std = precision^-1/2, mean = numerator / precision
        grad_precision = grad_precision - 0.5 * grad_z * noise * std ** 3 - grad_mean * mean / precision
        grad_numerator = grad_mean / precision  # numerator = (mean * precision)_bu + mean_p precision_p
        grad_precision_p = torch.addcmul(grad_precision, grad_numerator, mean_p)
        grad_raw = -grad_precision_p * precision_p * (1.0 - squashed ** 2)
        grad_head = torch.cat([grad_numerator * precision_p, grad_raw], -1)
        return grad_head, grad_numerator, grad_precision, None


class Trajectory(NamedTuple):
    """One pass over R sequences of T steps, batch first.

    z: (R, T, N d) the sampled latents; states: (R, T, H) s_{t-1}, the recurrent state step t reads;
    prior_mean, prior_log_var, post_mean, post_precision: (R, T, N, d) p(z_t | ...) and q(z_t | ...);
    noise: (R, T, N, d) the standard normal draws; last_state, last_z: the state after step T and z_T (R, N d).
    """
    z: torch.Tensor
    states: torch.Tensor
    prior_mean: torch.Tensor
    prior_log_var: torch.Tensor
    post_mean: torch.Tensor
    post_precision: torch.Tensor
    noise: torch.Tensor
    last_state: Any
    last_z: torch.Tensor

    def kl(self) -> torch.Tensor:
        """KL(q(z_{t,n} | ...) || p(z_{t,n} | ...)) per step and node: (R, T, N)."""
        return gaussian_kl(self.post_mean, -torch.log(self.post_precision), self.prior_mean, self.prior_log_var)

    def log_prior(self) -> torch.Tensor:
        """log p(z_t | z_{t-1}, s_{t-1}, gates) per step: (R, T)."""
        z = self.z.view_as(self.prior_mean)
        return gaussian_log_prob(z, self.prior_mean, self.prior_log_var).sum(-1)

    def log_posterior(self) -> torch.Tensor:
        """log q(z_t | x_t, z_{t-1}, s_{t-1}, gates) per step: (R, T)."""
        return reparameterized_log_prob(-torch.log(self.post_precision), self.noise).sum(-1)


def step_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's "mask" (R, T) bool, True on real steps (a prefix of each row); all True without one."""
    x = batch["x"]
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


def per_frame_and_sequence(key: str) -> Callable[[PerExample], dict[str, float]]:
    """Reduction of per-sequence totals under `key`: their sum over the sum of the sequences' steps (per frame,
    as every model reports `key`) and, as `key`_per_sequence, their mean."""
    return lambda per_example: {key: ratio_of_sums(key, "steps")(per_example),
                                f"{key}_per_sequence": mean_of(key)(per_example)}


def over_predicted_sequences(**reported: str) -> Callable[[PerExample], dict[str, Any]]:
    """Reduction: {name: the mean of per-sequence values `key` over the sequences long enough to score
    (`pred_valid`)} for `name=key` in `reported`, and their number as `predicted_sequences`."""
    def reduce(per_example: PerExample) -> dict[str, Any]:
        valid = per_example["pred_valid"].bool()
        means = {name: float(per_example[key][valid].double().mean()) for name, key in reported.items()}
        return {**means, "predicted_sequences": int(valid.sum())}

    return reduce


@ARCHITECTURES.register("RecurrentGraphVAE")
class RecurrentGraphVAE(GateSchedule, KLWarmup, BaseModel):
    """N latent nodes z_{t,n} in R^d per step, with learned gated edges within a step (c_{m,n}, m > n, node N-1
    the root) and from the previous step (g_{m,n}: z_{t-1,m} -> z_{t,n}, all m, n), and a recurrent state s_t.

    Generative model (s_0 learned, z_0 = 0; c and g drawn once per batch, or per sequence):
        z_{t,n} ~ N(TD_n(c_{:,n} * z_{t,>n}, g_{:,n} * z_{t-1}, s_{t-1})), root first
        x_t ~ p(x_t | Dec(z_t, s_{t-1}))
        s_t = RNN(s_{t-1}, [phi(x_t), z_t])   (GRU or LSTM; phi an MLP)
    Inference: q(z_{t,n} | ...) is the precision-weighted fusion of TD_n's prior with the bottom-up Gaussian
    BU_n(Enc(phi(x_t), s_{t-1})), sampled root first; parents are posterior samples. ELBO = sum_t mask_t
    [log p(x_t | ...) - sum_n KL(q_{t,n} || p_{t,n})], every KL analytic against the learned conditional prior.

    Batches: {"x": (B, T, D), optional "mask": (B, T) bool, True on real steps (a prefix of each row), optional
    "clean": (B, T, D) noiseless frames for the prediction metrics}. The loop over time (and, inside a step, over
    the N nodes of the top-down path) is the only Python loop; the features, the decoder and the KLs run on all
    steps at once after it. Each batch starts every sequence at s_0: nothing is carried across batches.

    Args:
        data_shape: (T, D), set by the framework.
        num_nodes, node_dim: N and d.
        cell: "gru" or "lstm", the recurrent state; state_dim: H.
        feature_dims: widths of phi (its last width is the feature size).
        encoder_dim: width of the bottom-up trunk Enc.
        head_hidden_dims: hidden widths of the per-node bottom-up and top-down heads (at least one).
        decoder_hidden_dims: hidden widths of the decoder.
        activation: of every network.
        likelihood: "gaussian", "bernoulli", or "stroke" (pen lift and offsets).
        gate_sampling, straight_through, tau_init, tau_decay, tau_min, fixed_gates_epoch: as GraphVAE, for both
            gate sets.
        gate_init_logit, prev_gate_init_logit: initial logits of the within-step and previous-step gates.
        kl_warmup_epochs: the KL's weight in the training loss rises from 0 to 1 over this many epochs.
        prefix_len, horizon: the prediction metrics condition on `prefix_len` steps and sample `horizon` more.
        prediction_samples: sampled continuations per sequence for `pred_mse`; figure_samples: drawn in figures.
    """

    diagnostics = ("edges",)
    unit = "frame"
    metrics = (
        Metric("elbo", per_frame_and_sequence("elbo"), "evidence lower bound on log p(x_1:T) with the hard gates, "
               "one posterior sample; nats per frame, and per sequence as elbo_per_sequence"),
        Metric("iw_nll", per_frame_and_sequence("iw_nll"), "importance-weighted estimate of -log p(x_1:T | hard "
               "gates) with K = iw_samples; nats per frame, and per sequence as iw_nll_per_sequence"),
        Metric("pred_mse", over_predicted_sequences(pred_mse="pred_mean_se", pred_mse_per_sample="pred_se"),
               "squared error per value of the predictive mean (the average of prediction_samples sampled "
               "continuations of `horizon` steps after `prefix_len`) against the clean frames; the mean error of "
               "the samples themselves as pred_mse_per_sample"),
        Metric("pred_mse_repeat_last", over_predicted_sequences(pred_mse_repeat_last="repeat_se"),
               "the same error for repeating the last observed frame (a baseline for pred_mse)"),
    )
    visualization_size = 6

    def __init__(self, data_shape: tuple[int, int], num_nodes: int = 4, node_dim: int = 4,
                 cell: Literal["gru", "lstm"] = "gru", state_dim: int = 64, feature_dims: list[int] = (64,),
                 encoder_dim: int = 64, head_hidden_dims: list[int] = (64,), decoder_hidden_dims: list[int] = (64,),
                 activation: str = "elu", likelihood: Literal["gaussian", "bernoulli", "stroke"] = "gaussian",
                 gate_sampling: Literal["per_batch", "per_example"] = "per_batch", straight_through: bool = False,
                 gate_init_logit: float = 0.5, prev_gate_init_logit: float = 0.5, tau_init: float = 1.0,
                 tau_decay: float = 0.9, tau_min: float = 0.3, fixed_gates_epoch: int = 0,
                 kl_warmup_epochs: int = 0, prefix_len: int = 16, horizon: int = 16, prediction_samples: int = 10,
                 figure_samples: int = 2):
        super().__init__()
        if len(data_shape) != 2:
            raise ConfigError(f"RecurrentGraphVAE needs sequences, data_shape (T, D); got {tuple(data_shape)}")
        for name, value in [("num_nodes", num_nodes), ("node_dim", node_dim), ("state_dim", state_dim),
                            ("encoder_dim", encoder_dim), ("prefix_len", prefix_len), ("horizon", horizon),
                            ("prediction_samples", prediction_samples), ("figure_samples", figure_samples)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {likelihood!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not head_hidden_dims or not feature_dims:
            raise ValueError("head_hidden_dims and feature_dims need at least one width each")
        self.init_gate_schedule(gate_sampling, straight_through, tau_init, tau_decay, tau_min, fixed_gates_epoch)
        self.init_kl_warmup(kl_warmup_epochs)  # also counts the epochs for the temperature schedule
        self.num_nodes, self.node_dim, self.cell = num_nodes, node_dim, cell
        self.encoder_dim, self.head_width = encoder_dim, head_hidden_dims[0]
        self.prefix_len, self.horizon = prefix_len, horizon
        self.prediction_samples, self.figure_samples = prediction_samples, figure_samples
        self.likelihood = LIKELIHOODS[likelihood]
        obs_dim = data_shape[1]
        latent = num_nodes * node_dim
        self.act = ACTIVATIONS[activation]()

        self.features = nn.Sequential(mlp(obs_dim, list(feature_dims[:-1]), feature_dims[-1], activation),
                                      ACTIVATIONS[activation]())
        rnn = nn.GRUCell if cell == "gru" else nn.LSTMCell
        self.rnn = rnn(feature_dims[-1] + latent, state_dim)
        self.initial_state = nn.Parameter(torch.zeros(state_dim * (1 if cell == "gru" else 2)))
        # everything that reads s_{t-1} in a step, as one layer: the encoder's and the N prior heads' first layers
        self.state_proj = nn.Linear(state_dim, encoder_dim + num_nodes * self.head_width)
        self.encoder_input = nn.Linear(feature_dims[-1], encoder_dim, bias=False)
        self.bottom_up = StackedMLP(num_nodes, encoder_dim, list(head_hidden_dims), 2 * node_dim, activation)
        bound = latent ** -0.5
        self.prior_prev_weight = nn.Parameter(torch.empty(num_nodes, latent, self.head_width).uniform_(-bound, bound))
        self.prior_same_weight = nn.Parameter(torch.empty(num_nodes, latent, self.head_width).uniform_(-bound, bound))
        self.prior_out = StackedMLP(num_nodes, self.head_width, list(head_hidden_dims[1:]), 2 * node_dim, activation)
        self.decoder = mlp(latent + state_dim, list(decoder_hidden_dims), self.likelihood.param_dim(obs_dim),
                           activation)
        self.gates = EdgeGates(num_nodes, gate_init_logit, edges="lower")
        self.prev_gates = EdgeGates(num_nodes, prev_gate_init_logit, edges="all")

    # ---------------------------------------------------------------- recurrent state
    def start_state(self, rows: int) -> Any:
        """s_0 for `rows` sequences: (rows, H), or (h, c) for the LSTM."""
        state = self.initial_state.expand(rows, -1).contiguous()
        return state if self.cell == "gru" else tuple(state.chunk(2, -1))

    def hidden(self, state: Any) -> torch.Tensor:
        """The part of the state the networks read: (rows, H)."""
        return state if self.cell == "gru" else state[0]

    # ---------------------------------------------------------------- one step
    def gated_weights(self, same_gates: torch.Tensor,
                      prev_gates: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list]:
        """The prior heads' first-layer weights with the gates folded in, made once per pass: from z_{t-1}
        (..., N d, N h); from each same-step parent m (..., d, N h), in node order; the heads' other layers."""
        same = fold_gates(self.prior_same_weight, same_gates).split(self.node_dim, dim=-2)
        return fold_gates(self.prior_prev_weight, prev_gates), same, self.prior_out.unbound_nets()

    def sample_nodes(self, prior_input: torch.Tensor, same_weights: tuple[torch.Tensor, ...], prior_nets: list,
                     noise: tuple[torch.Tensor, ...], bottom_up: list[tuple[torch.Tensor, torch.Tensor]],
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """Sample z_t root first.

        prior_input: (R, N h) the prior heads' first layers applied to s_{t-1} and the gated z_{t-1}; each
        sampled node adds its gated share for its children. noise: per node (R, d). bottom_up: per node
        (mean * precision, precision) (R, d) of BU_n, fused with the prior by precision weighting (zeros: sample
        the prior itself).
        Returns z_t (R, N d) and, per node from the root down, (prior head output (R, 2d) = (mean, raw
        log-variance), posterior mean, posterior precision).
        """
        width = self.head_width
        nodes, stats = [], []
        for n in range(self.num_nodes - 1, -1, -1):
            head = self.prior_out.run_net(prior_nets[n], self.act(prior_input[:, n * width:(n + 1) * width]))
            z_n, mean, precision = FusedGaussianSample.apply(head, *bottom_up[n], noise[n])
            if n > 0:
                prior_input = add_vecmat(prior_input, z_n, same_weights[n])
            nodes.append(z_n)
            stats.append((head, mean, precision))
        return torch.cat(nodes[::-1], -1), stats

    # ---------------------------------------------------------------- inference
    def filter(self, x: torch.Tensor, same_gates: torch.Tensor, prev_gates: torch.Tensor,
               noise: torch.Tensor | None = None) -> Trajectory:
        """Sample z_1:T ~ q(z | x) for x (R, T, D) with gates (N, N) or (R, N, N) each; `noise` (R, T, N, d)
        fixes the standard normal draws."""
        R, T, _ = x.shape
        N, d = self.num_nodes, self.node_dim
        if noise is None:
            noise = torch.randn(R, T, N, d, device=x.device, dtype=x.dtype)
        features = self.features(x)
        encoder_x = self.encoder_input(features)
        prev_weight, same_weights, prior_nets = self.gated_weights(same_gates, prev_gates)
        state, z_prev = self.start_state(R), x.new_zeros(R, N * d)
        zs, states, stats = [], [], []
        for features_t, encoder_t, noise_t in zip(features.unbind(1), encoder_x.unbind(1), noise.unbind(1)):
            s = self.hidden(state)
            to_encoder, to_prior = self.state_proj(s).split([self.encoder_dim, N * self.head_width], -1)
            prior_input = add_vecmat(to_prior, z_prev, prev_weight)
            bu_mean, bu_raw = self.bottom_up(self.act(encoder_t + to_encoder), shared_input=True).chunk(2, -1)
            bu_precision = torch.exp(-bounded_log_variance(bu_raw))
            bottom_up = list(zip((bu_mean * bu_precision).unbind(1), bu_precision.unbind(1)))
            z_t, step_stats = self.sample_nodes(prior_input, same_weights, prior_nets, noise_t.unbind(1), bottom_up)
            state = self.rnn(torch.cat([features_t, z_t], -1), state)
            zs.append(z_t)
            states.append(s)
            stats += step_stats
            z_prev = z_t

        def by_step_and_node(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:  # T N x (R, k), root first
            return torch.stack(tensors, 1).view(R, T, N, -1).flip(2)

        prior_head, post_mean, post_precision = map(by_step_and_node, zip(*stats))
        prior_mean, prior_raw = prior_head.chunk(2, -1)
        return Trajectory(torch.stack(zs, 1), torch.stack(states, 1), prior_mean, bounded_log_variance(prior_raw),
                          post_mean, post_precision, noise, state, z_prev)

    def decode(self, z: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., param_dim) of p(x_t | z_t, s_{t-1}) for z (..., N d) and states (..., H)."""
        return self.decoder(torch.cat([z, states], -1))

    def step_terms(self, x: torch.Tensor, mask: torch.Tensor, traj: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x_t | z_t, s_{t-1}) (R, T) and the KL per node (R, T, N), zero on padded steps."""
        log_px = self.likelihood.log_prob(self.decode(traj.z, traj.states), x)
        return torch.where(mask, log_px, 0.0), torch.where(mask[..., None], traj.kl(), 0.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], step_mask(batch)
        same_gates, prev_gates = self.sample_gates(self.gates, len(x)), self.sample_gates(self.prev_gates, len(x))
        log_px, kl = self.step_terms(x, mask, self.filter(x, same_gates, prev_gates))
        steps = mask.sum()
        recon, kl_total = log_px.sum(), kl.sum()
        kl_weight = self.kl_weight if self.training else 1.0
        node_kl = kl.detach().sum((0, 1)) / steps
        return {
            "loss": -(recon - kl_weight * kl_total) / steps,
            "elbo": ((recon - kl_total) / steps).detach(),
            "elbo_per_sequence": ((recon - kl_total) / len(x)).detach(),
            "recon": (recon / steps).detach(),
            "kl": (kl_total / steps).detach(),
            **{f"kl_node{n}": node_kl[n] for n in range(self.num_nodes)},
            "edges": self.gates.hard().sum(),
            "prev_edges": self.prev_gates.hard().sum(),
        }

    # ---------------------------------------------------------------- evaluation
    def hard_gates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The within-step and previous-step graphs 1[sigmoid(a) > 1/2]: (N, N) each."""
        return self.gates.hard(), self.prev_gates.hard()

    def iw_log_likelihood(self, x: torch.Tensor, mask: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p(x_1:T | hard gates) per sequence, estimated with K whole-sequence samples from q: (R,)."""
        gates = self.hard_gates()

        def log_weights(k: int) -> torch.Tensor:
            xs, masks = x.repeat(k, 1, 1), mask.repeat(k, 1)
            traj = self.filter(xs, *gates)
            log_px = self.likelihood.log_prob(self.decode(traj.z, traj.states), xs)
            log_w = torch.where(masks, log_px + traj.log_prior() - traj.log_posterior(), 0.0)
            return log_w.sum(1).view(k, len(x))

        return iw_log_likelihood(log_weights, num_samples, x.shape[0] * x.shape[1])

    def rollout(self, state: Any, z_prev: torch.Tensor, steps: int, same_gates: torch.Tensor,
                prev_gates: torch.Tensor) -> torch.Tensor:
        """Continue R sequences from their state and last z (R, N d) by ancestral sampling from the generative
        model (each x_t drawn from p(x_t | ...) and fed back): the decoded means E[x_t | z_t, s_{t-1}]
        (R, steps, D)."""
        prev_weight, same_weights, prior_nets = self.gated_weights(same_gates, prev_gates)
        rows = len(z_prev)
        prior_only = [(z_prev.new_zeros(rows, self.node_dim),) * 2] * self.num_nodes  # no bottom-up term
        means = []
        for _ in range(steps):
            s = self.hidden(state)
            to_prior = self.state_proj(s)[:, self.encoder_dim:]
            noise = torch.randn(rows, self.num_nodes, self.node_dim, device=s.device, dtype=s.dtype)
            z_t, _ = self.sample_nodes(add_vecmat(to_prior, z_prev, prev_weight), same_weights, prior_nets,
                                       noise.unbind(1), prior_only)
            params = self.decode(z_t, s)
            means.append(self.likelihood.mean(params))
            state = self.rnn(torch.cat([self.features(self.likelihood.sample(params)), z_t], -1), state)
            z_prev = z_t
        return torch.stack(means, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded means E[x_t | z_t, s_{t-1}] with z ~ q(z | x), hard gates: (R, T, D)."""
        traj = self.filter(x, *self.hard_gates())
        return self.likelihood.mean(self.decode(traj.z, traj.states))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Condition on the first `prefix_len` steps of x (R, T, D) and sample `horizon` more from the learned
        prior, S times (hard gates): decoded means (S, R, prefix_len + horizon, D), the prefix's reconstructions
        followed by the sampled continuation."""
        gates = self.hard_gates()
        prefix = x[:, :self.prefix_len].repeat(num_samples, 1, 1)
        traj = self.filter(prefix, *gates)
        seen = self.likelihood.mean(self.decode(traj.z, traj.states))
        continued = self.rollout(traj.last_state, traj.last_z, self.horizon, *gates)
        return torch.cat([seen, continued], 1).view(num_samples, len(x), self.prefix_len + self.horizon, -1)

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per sequence: its steps; the ELBO and KL per node summed over its steps; the IW estimate of
        -log p(x_1:T); the squared errors (means over steps and dims) of the sampled continuations (mean over
        the samples), of their average, and of repeating the last observed frame, with `pred_valid` marking
        sequences long enough to score."""
        x, mask = batch["x"], step_mask(batch)
        out = {"steps": mask.sum(1).double()}
        if "elbo" in metrics:
            log_px, kl = self.step_terms(x, mask, self.filter(x, *self.hard_gates()))
            out["elbo"] = (log_px - kl.sum(-1)).sum(1)
            out["kl_nodes"] = kl.sum(1)
        if "iw_nll" in metrics:
            out["iw_nll"] = -self.iw_log_likelihood(x, mask, options["iw_samples"])
        if "pred_mse" in metrics or "pred_mse_repeat_last" in metrics:
            prefix, H = self.prefix_len, self.horizon
            if x.shape[1] < prefix + H:
                raise DataError(f"prediction needs sequences of at least prefix_len + horizon = {prefix + H} steps, "
                                f"got {x.shape[1]}; lower arch.args.prefix_len or horizon, or drop pred_mse from "
                                f"metrics")
            truth = batch.get("clean", x)[:, prefix:prefix + H]
            out["pred_valid"] = mask[:, prefix + H - 1]
            if "pred_mse" in metrics:
                continued = self.predict(x, self.prediction_samples)[:, :, prefix:]
                out["pred_se"] = ((continued - truth) ** 2).mean((0, 2, 3))
                out["pred_mean_se"] = ((continued.mean(0) - truth) ** 2).mean((1, 2))
            if "pred_mse_repeat_last" in metrics:
                out["repeat_se"] = ((x[:, prefix - 1:prefix] - truth) ** 2).mean((1, 2))
        return out

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """The KL per node per step (nats, with `elbo`); both learned graphs (edge probabilities, [m][n] =
        P(m -> n), and hard adjacencies: `edge_probs` and `adjacency` within a step, `prev_edge_probs` and
        `prev_adjacency` from z_{t-1,m} to z_{t,n}); prefix_len and horizon (with a prediction metric); the number
        of steps evaluated."""
        steps = per_example["steps"].double().sum()
        results: dict[str, Any] = {}
        if "kl_nodes" in per_example:
            results["kl_nodes"] = [round(float(v), 4) for v in per_example["kl_nodes"].double().sum(0) / steps]
        for prefix, gates in (("", self.gates), ("prev_", self.prev_gates)):
            results[f"{prefix}edge_probs"] = [[round(float(p), 4) for p in row] for row in gates.probs().detach().cpu()]
            results[f"{prefix}adjacency"] = gates.hard().int().cpu().tolist()
        if "pred_valid" in per_example:
            results.update(prefix_len=self.prefix_len, horizon=self.horizon)
        results["num_steps"] = int(steps)
        return results

    # ---------------------------------------------------------------- figures
    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Both graphs, `{tag}/same_step/{edge_probs,adjacency}` and `{tag}/previous_step/...`; and per sequence
        (the first 3), `{tag}/sequences_{i}`: data, reconstruction and sampled continuations after the prefix
        (pen paths for strokes)."""
        log_graph(writer, f"{tag}/same_step", step, self.gates.probs(), self.gates.hard(), self.gates.mask,
                  name=f"Graph within a step (node {self.num_nodes - 1} = root)")
        log_graph(writer, f"{tag}/previous_step", step, self.prev_gates.probs(), self.prev_gates.hard(),
                  self.prev_gates.mask, name="Graph from step t-1 to step t",
                  parent_label="parent node m at step t-1", child_label="child node n at step t")
        x, mask = batch["x"][:3], step_mask(batch)[:3, :, None]
        rows = {"data": torch.where(mask, x, torch.nan),
                "reconstruction": torch.where(mask, self.reconstruct(x), torch.nan)}
        length = self.prefix_len + self.horizon
        prefix_len = None
        if x.shape[1] >= length:
            rows = {name: value[:, :length] for name, value in rows.items()}
            rows.update({f"continuation {i + 1}": sample
                         for i, sample in enumerate(self.predict(x, self.figure_samples))})
            prefix_len = self.prefix_len
        strokes = self.likelihood is StrokeLikelihood
        log_sequences(writer, f"{tag}/sequences", step, rows, prefix_len, strokes=strokes,
                      title="Pen strokes, sequence" if strokes else "Sequence")
