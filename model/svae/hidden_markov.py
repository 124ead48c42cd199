"""SVAE-HMM: a hidden Markov model over a Gaussian mixture as the latent of every frame, per-frame recognition
potentials and a per-frame decoder (SVAE.md sections 3 and 6).

z_1 ~ Cat(pi0), z_t+1 | z_t ~ Cat(Pi[z_t]); x_t | z_t = k ~ N(mu_k, Sigma_k); y_t | x_t from the decoder. Local
inference is the SVAE-GMM's mean field with a Markov chain in place of independent labels: q(x_t) combines
the recognition potential with the state-weighted NIW expectations (`component_step`), and q(z_1:T) is the
forward-backward over the node log-potentials E_q(x_t)[log N(x_t | mu_k, Sigma_k)]. The local KL is
    KL = sum_t [<psi_t, E t(x_t)> - A(q(x_t)) + <w_t, g_t>] - log Z_z,
w_t the q(z_t) that q(x) was built from. Frames after a chain's last real frame are cut: their z moves
uniformly (log-potential -log K) with node log-potential 0, and their x counts nowhere, so q, the KL and log Z
of the frames inside are the shorter chain's.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch

from model.expfam import niw
from model.expfam.niw import NIWNatural
from model.registry import ARCHITECTURES
from model.svae.discrete_states import MarkovStates, SegmentingSVAE, chains_cut
from model.svae.gmm_inference import ComponentStep, MixtureExpectations, collapsed_log_evidence, component_step, \
    mixture_expectations
from model.svae.graphical_model import NIW
from model.svae.hmm import HMMPosterior, hmm_log_normalizer, hmm_posterior
from model.svae.meanfield import coordinate_ascent


class MarkovMixtureStatistics(NamedTuple):
    """q(z_1) and q(z_t, z_t+1) summed (K,), (K, K); the components' NIW (batch K); the sequences; and the NIW
    statistics of the batch's worst-explained frames (`MarkovStates.revive_unused_state`; None: reviving off)."""
    initial_state: torch.Tensor
    transitions: torch.Tensor
    components: NIWNatural
    count: torch.Tensor
    revive: NIWNatural | None = None


class MarkovMixturePotentials(NamedTuple):
    """E[log pi0] (K,), E[log Pi] (K, K) and the components' expected Gaussian potentials."""
    log_init: torch.Tensor
    log_trans: torch.Tensor
    mix: MixtureExpectations


class MarkovMixturePosterior(NamedTuple):
    """q(z) over the frames (`states`), q(x_t) of every frame (`frames`, flattened (B T)), the local KL (B,), the
    jitter retries, the sweeps without gradient, the frames inside each chain (B, T) (None: all), and S
    reparameterised samples (S, B, T, n) when asked for."""
    states: HMMPosterior
    frames: ComponentStep
    kl: torch.Tensor
    retries: torch.Tensor
    within: torch.Tensor | None
    iterations: torch.Tensor | int = 1
    samples: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.frames.mean.unflatten(0, self.states.marginals.shape[:2])


def _cut(node: torch.Tensor, log_trans: torch.Tensor, within: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Node (..., B, T, K) and transition log-potentials, with the frames outside `within` (B, T) cut (module doc)."""
    if within is None:
        return node, log_trans
    K = node.shape[-1]
    return node * within[..., None], torch.where(within[:, 1:, None, None], log_trans, -math.log(K))


def markov_mixture_sweep(pot: MarkovMixturePotentials, node_J: torch.Tensor, node_h: torch.Tensor,
                         weights: torch.Tensor, within: torch.Tensor | None) -> MarkovMixturePosterior:
    """q(x_t) of every frame given the state weights (B, T, K), then q(z) by forward-backward, and the local KL."""
    B, T, K = weights.shape
    step = component_step(node_J.flatten(0, 1), node_h.flatten(0, 1), weights.flatten(0, 1), pot.mix)
    node, log_trans = _cut((step.g + pot.mix.const).unflatten(0, (B, T)), pot.log_trans, within)
    states = hmm_posterior(pot.log_init, log_trans, node)
    frame_kl = step.kl.unflatten(0, (B, T))
    frame_kl = frame_kl if within is None else frame_kl * within
    return MarkovMixturePosterior(states, step, frame_kl.sum(-1) - states.log_z, step.gaussian.retried.sum(), within)


def markov_mixture_meanfield(pot: MarkovMixturePotentials, node_J: torch.Tensor, node_h: torch.Tensor,
                             max_iter: int, tol: float, within: torch.Tensor | None) -> MarkovMixturePosterior:
    """`coordinate_ascent` from q(z) with every x_t integrated out exactly (`collapsed_log_evidence`)."""
    B, T, n = node_h.shape
    detached = node_J.detach(), node_h.detach()

    def sweep(weights: torch.Tensor, differentiable: bool) -> tuple[MarkovMixturePosterior, torch.Tensor]:
        post = markov_mixture_sweep(pot, *((node_J, node_h) if differentiable else detached), weights, within)
        return post, post.states.marginals

    with torch.no_grad():
        collapsed = collapsed_log_evidence(*(v.flatten(0, 1) for v in detached), pot.mix) + pot.mix.const
        node, log_trans = _cut(collapsed.unflatten(0, (B, T)), pot.log_trans, within)
        start = hmm_posterior(pot.log_init, log_trans, node).marginals
    post, retries, iterations = coordinate_ascent(sweep, start, max_iter, tol, retries=lambda p: p.retries)
    return post._replace(retries=retries, iterations=iterations)


class MarkovMixture(MarkovStates):
    """z_1:T a Markov chain of K states (`MarkovStates`: sticky Dirichlet priors, revival of unused states);
    x_t | z_t = k ~ N(mu_k, Sigma_k), one n-dimensional latent per frame. Factors "initial_state", "transitions"
    and "components" (NIW, batch K, as SVAE-GMM's: m = 0, kappa, nu = n + offset, Psi = nu I; q starts with
    means init_mean_scale * N(0, I)). Local inference: `markov_mixture_meanfield`."""

    Statistics = MarkovMixtureStatistics
    emission = "components"

    def __init__(self, num_states: int, latent_dim: int, max_iter: int, tol: float, prior_alpha: float,
                 stickiness: float, prior_kappa: float, prior_nu_offset: float, init_mean_scale: float,
                 revive_below: float):
        super().__init__()
        for name, value in [("num_states", num_states), ("latent_dim", latent_dim), ("max_iter", max_iter)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if tol <= 0 or prior_kappa <= 0 or prior_nu_offset <= -1:
            raise ValueError(f"tol and prior_kappa must be > 0 and prior_nu_offset > -1, got {tol}, {prior_kappa}, "
                             f"{prior_nu_offset}")
        self.latent_dim, self.max_iter, self.tol = latent_dim, max_iter, tol
        K, n, f64 = num_states, latent_dim, torch.float64
        self.add_markov_states(num_states, prior_alpha, stickiness, revive_below)
        nu, kappa = torch.full((K,), n + prior_nu_offset, dtype=f64), torch.full((K,), prior_kappa, dtype=f64)
        scale = nu[:, None, None] * torch.eye(n, dtype=f64)
        means = torch.zeros(K, n, dtype=f64), init_mean_scale * torch.randn(K, n, dtype=f64)
        self.add_global_factor("components", NIW, *(niw.standard_to_natural(m, kappa, scale, nu) for m in means))

    def potentials(self, stats: dict[str, Any]) -> MarkovMixturePotentials:
        return MarkovMixturePotentials(stats["initial_state"], stats["transitions"],
                                       mixture_expectations(stats["initial_state"], stats["components"]))

    def infer(self, potentials: MarkovMixturePotentials, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: torch.Tensor | None = None) -> MarkovMixturePosterior:
        within = chains_cut(mask)
        post = markov_mixture_meanfield(potentials, node_J, node_h, self.max_iter, self.tol, within)
        samples = post.frames.gaussian.sample(num_samples, post.frames.mean) if num_samples else None
        return post._replace(samples=None if samples is None else samples.unflatten(1, node_h.shape[:2]))

    def statistics(self, post: MarkovMixturePosterior) -> MarkovMixtureStatistics:
        """Initial state: sum_b q(z_1); transitions: sum_b,t q(z_t, z_t+1); NIW_k: sum_b,t q(z_t = k) (E x x^T,
        E x, 1, 1); over the frames inside each chain."""
        marginals, pairs = post.states.marginals.detach(), post.states.pair_marginals.detach()
        if post.within is not None:
            marginals, pairs = marginals * post.within[..., None], pairs * post.within[:, 1:, None, None]
        second, mean = post.frames.second.detach(), post.frames.mean.detach()
        revive = None
        if self.revive_below > 0:
            fit = (marginals * post.frames.g.detach().unflatten(0, marginals.shape[:2])).sum(-1)
            worst = self.worst_frames(fit, None if post.within is None else post.within.to(fit.dtype))
            revive = NIWNatural(*(value[0] for value in niw.weighted_gaussian_stats(worst.flatten()[:, None], second,
                                                                                    mean)))
        return MarkovMixtureStatistics(marginals[:, 0].sum(0), pairs.sum((0, 1)),
                                       niw.weighted_gaussian_stats(marginals.flatten(0, 1), second, mean),
                                       marginals.new_tensor(float(len(marginals))), revive)

    def state_counts(self, statistics: MarkovMixtureStatistics) -> torch.Tensor:
        return statistics.components.kappa

    def posterior_log_prob(self, post: MarkovMixturePosterior, x: torch.Tensor) -> torch.Tensor:
        log_q = post.frames.gaussian.log_prob(x.flatten(1, 2)).unflatten(1, x.shape[1:3])  # (S, B, T)
        return (log_q if post.within is None else log_q * post.within).sum(-1)

    def prior_log_prob(self, potentials: MarkovMixturePotentials, x: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) = log sum_z p(z) prod_t N(x_t | mu_z_t, Sigma_z_t) for paths x (S, B, T, n): (S, B)."""
        mix = potentials.mix
        node = -0.5 * torch.einsum("sbti,kij,sbtj->sbtk", x, mix.J, x) + x @ mix.h.mT + mix.const
        node, log_trans = _cut(node, potentials.log_trans, chains_cut(mask))
        return hmm_log_normalizer(potentials.log_init, log_trans, node)

    def forecast(self, post: MarkovMixturePosterior, horizon: int, num_samples: int) -> torch.Tensor:
        """z_T from q(z_T), then z_t+1 ~ E[Pi][z_t] and x_t ~ N(mu_z_t, Sigma_z_t) at the point estimate of the
        components (Sigma^-1 = E[Sigma^-1]): (S, B, H, n)."""
        mix = self.potentials(self.global_stats(point=True)).mix
        cov = torch.linalg.inv(mix.J)
        mean, root, trans = (cov @ mix.h[..., None])[..., 0], torch.linalg.cholesky(cov), self.transition_matrix()
        state = torch.multinomial(post.states.marginals[:, -1], num_samples, replacement=True).T  # (S, B)
        paths = []
        for _ in range(horizon):
            state = torch.multinomial(trans[state.flatten()], 1).view_as(state)
            noise = torch.randn(*state.shape, self.latent_dim, 1, dtype=cov.dtype, device=cov.device)
            paths.append(mean[state] + (root[state] @ noise)[..., 0])
        return torch.stack(paths, 2)

    def diagnostics(self, post: MarkovMixturePosterior) -> dict[str, torch.Tensor]:
        return {"states_in_use": self.states_in_use(post.states.marginals), "meanfield_iters": post.iterations.double()}


@ARCHITECTURES.register("SVAE-HMM")
class SVAEHMM(SegmentingSVAE):
    """Structured VAE whose latent sequence is a hidden Markov model over a Gaussian mixture (`MarkovMixture`):
    K discrete states, each a Gaussian over the n-dimensional x_t; recognition, decoder, prediction and the
    segmentation metrics and figures as SVAE-SLDS (`SegmentingSVAE`).

    Args (besides SVAE-LDS's): num_states, max_iter, tol, prior_alpha, stickiness, revive_below,
    kl_warmup_epochs and figure_sequences as SVAE-SLDS's; prior_kappa, prior_nu_offset, init_mean_scale as
    SVAE-GMM's.
    """

    def __init__(self, data_shape: tuple[int, int], num_train: int, num_states: int = 3, latent_dim: int = 4,
                 hidden_dims: list[int] = (50,), activation: str = "tanh", init_scale: float = 1e-2,
                 num_samples: int = 1, eval_samples: int = 10, rho: float = 0.02, prefix_len: int = 25,
                 horizon: int = 20, figure_samples: int = 3, max_iter: int = 20, tol: float = 1e-2,
                 prior_alpha: float = 1.0, stickiness: float = 10.0, prior_kappa: float = 0.5,
                 prior_nu_offset: float = 0.5, init_mean_scale: float = 3.0, revive_below: float = 0.02,
                 prediction_samples: int = 100, kl_warmup_epochs: int = 0,
                 likelihood: Literal["gaussian", "sigmoid_gaussian", "bernoulli"] = "sigmoid_gaussian",
                 figure_sequences: int = 3, frames_per_example: float | None = None,
                 label_names: tuple[str, ...] | None = None, channel_names: tuple[str, ...] | None = None,
                 sequence_names: tuple[str, ...] | None = None, frame_rate: float | None = None):
        def make_pgm() -> MarkovMixture:
            return MarkovMixture(num_states, latent_dim, max_iter, tol, prior_alpha, stickiness, prior_kappa,
                                 prior_nu_offset, init_mean_scale, revive_below)

        super().__init__(make_pgm, data_shape, num_train, latent_dim, hidden_dims, activation, init_scale, rho,
                         num_samples, eval_samples, prefix_len, horizon, figure_samples, kl_warmup_epochs, likelihood,
                         frames_per_example, prediction_samples)
        self.init_segmentation(figure_sequences, label_names, channel_names, sequence_names, frame_rate)
