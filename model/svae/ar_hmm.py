"""An AR(1)-HMM fitted by variational EM to fixed trajectories: the start of an SLDS's discrete layer (SVAE.md
section 8, as `ssm` starts an SLDS from an AR-HMM fitted to its continuous states), and a baseline of its own.

The model: z_1 ~ Cat(pi0), z_t+1 | z_t ~ Cat(Pi[z_t]), x_t+1 = A_{z_t} u_t + eps, eps ~ N(0, Q_{z_t}), with
u_t = x_t (the SLDS's dynamics) or u_t = (x_t, 1) (an intercept), under conjugate priors: Dirichlet on pi0 and on
each row of Pi, MNIW on each (A_k, Q_k) (A_k: n x m). The steps enter through their moments (`StepMoments`):
E[u_t u_t^T] (B, T-1, m, m), E[u_t x_t+1^T] (B, T-1, m, n), E[x_t+1 x_t+1^T] (B, T-1, n, n) (a smoother's q(x),
or products of points).

Variational EM alternates q(z) (forward-backward; the node log-potential of step t in state k is the
SLDS's l_t(k) = E_q(theta)[log N(x_t+1; A_k u_t, Q_k)]) and q(theta) = prior + expected counts (the conjugate
update, the fixed point of the SLDS's SVI step), until the bound

    L = sum_b log Z_z,b - KL(q(theta) || p(theta))

(the ELBO of the trajectories) gains less than `tol` nats per step. Each restart starts from its own hard
assignment of the steps (k-means++ and Lloyd's algorithm on features the caller gives, standardized), and the
restart with the highest L wins. Nothing here reads labels.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam import dirichlet, mniw
from model.expfam.mniw import MNIWNatural
from model.kmeans import kmeans
from model.svae.chain import ChainPosterior, weighted_moments
from model.svae.hmm import hmm_posterior


class StepMoments(NamedTuple):
    """The moments of every step t -> t+1: inputs E[u_t u_t^T] (B, T-1, m, m), cross E[u_t x_t+1^T]
    (B, T-1, m, n), outputs E[x_t+1 x_t+1^T] (B, T-1, n, n)."""
    inputs: torch.Tensor
    cross: torch.Tensor
    outputs: torch.Tensor

    @classmethod
    def of_chain(cls, post: ChainPosterior) -> StepMoments:
        """The moments of a chain posterior q(x_1:T) (u_t = x_t), detached."""
        second, cross = (moment.detach() for moment in post.second_moments())
        return cls(second[:, :-1], cross, second[:, 1:])

    @classmethod
    def of_points(cls, x: torch.Tensor, intercept: bool = False) -> StepMoments:
        """The moments of point trajectories x (B, T, n), with u_t = x_t or, with `intercept`, (x_t, 1)."""
        u = torch.cat([x, torch.ones_like(x[..., :1])], -1) if intercept else x
        outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731
        return cls(outer(u[:, :-1], u[:, :-1]), outer(u[:, :-1], x[:, 1:]), outer(x[:, 1:], x[:, 1:]))


class ARHMMPrior(NamedTuple):
    """The conjugate priors in natural parameters: Dirichlet on pi0 (K,) and on the rows of Pi (K, K), and the
    MNIW of each state's dynamics (batch K)."""
    initial_state: torch.Tensor
    transitions: torch.Tensor
    dynamics: MNIWNatural


class ARHMMFit(NamedTuple):
    """The winning restart. q(theta) = prior + these counts: q(z_1) summed (K,), q(z_t, z_t+1) summed over the
    real steps (K, K), and per state the MNIW statistics of its steps (batch K). Also q(z_t) of every frame
    (B, T, K), the bound L (nats), the EM iterations and every restart's bound."""
    initial_state: torch.Tensor
    transitions: torch.Tensor
    dynamics: MNIWNatural
    marginals: torch.Tensor
    bound: float
    iterations: int
    restart_bounds: list[float]


def pooled_dynamics_prior(moments: StepMoments, steps: torch.Tensor, num_states: int) -> MNIWNatural:
    """An MNIW prior centred on one AR fit to every real step (empirical Bayes, as MoSeq centres its prior): the
    pooled statistics of all steps, scaled to weigh as n + 2 steps, for each of `num_states` states. Its mean
    dynamics are the least-squares fit M = (sum x' u^T)(sum u u^T)^-1 and its mean noise the pooled residual
    covariance, whatever the data's scale; n + 2 steps keep it proper and weak."""
    pooled = _dynamics_counts(steps[..., None], moments)
    n = moments.outputs.shape[-1]
    weight = (n + 2.0) / pooled.nu[0]
    return MNIWNatural(*(weight * value[0].expand(num_states, *value.shape[1:]) for value in pooled))


def step_log_potentials(e: mniw.MNIWExpectations, moments: StepMoments) -> torch.Tensor:
    """l_t(k) = E_q(theta)[log N(x_t+1; A_k u_t, Q_k)] = -1/2 <E[A^T Q^-1 A], E u u^T> + <E[A^T Q^-1], E u x'^T>
    - 1/2 <E[Q^-1], E x' x'^T> + 1/2 E log|Q^-1| - n/2 log 2 pi, every step and state, from the dynamics'
    expected statistics `e` (`mniw.expected_stats`, or `mniw.point_stats` for the plug-in value): (B, T-1, K)."""
    n = e.q.shape[-1]
    inner = lambda moment, matrix: moment.flatten(-2) @ matrix.flatten(-2).mT  # noqa: E731
    return (-0.5 * inner(moments.inputs, e.aqa) + inner(moments.cross, e.qa.mT) - 0.5 * inner(moments.outputs, e.q)
            + 0.5 * e.logdet - 0.5 * n * math.log(2 * math.pi))


def _dynamics_counts(weights: torch.Tensor, moments: StepMoments) -> MNIWNatural:
    """Per state the MNIW statistics of the steps weighted by weights (B, T-1, K) (zero on padded steps)."""
    return MNIWNatural(weighted_moments(weights, moments.inputs), weighted_moments(weights, moments.cross),
                       weighted_moments(weights, moments.outputs), weights.sum((0, 1)))


def _add(prior: MNIWNatural, counts: MNIWNatural) -> MNIWNatural:
    return MNIWNatural(*(p + c for p, c in zip(prior, counts)))


def _kl(prior: ARHMMPrior, initial_state: torch.Tensor, transitions: torch.Tensor, dynamics: MNIWNatural) -> float:
    """KL(q(theta) || p(theta)) in nats."""
    return float(dirichlet.kl(initial_state, prior.initial_state).sum()
                 + dirichlet.kl(transitions, prior.transitions).sum() + mniw.kl(dynamics, prior.dynamics).sum())


def _restart(moments: StepMoments, features: torch.Tensor, steps: torch.Tensor, prior: ARHMMPrior,
             generator: torch.Generator, max_iter: int, tol: float, variational: bool) -> ARHMMFit:
    B, T1 = steps.shape
    K = prior.initial_state.shape[-1]
    inside = steps.flatten() > 0
    hard = torch.zeros(B * T1, K, dtype=steps.dtype, device=steps.device)
    hard[inside] = torch.nn.functional.one_hot(kmeans(features[inside], K, generator)[0], K).to(steps.dtype)
    initial_state, transitions = prior.initial_state, prior.transitions
    dynamics = _add(prior.dynamics, _dynamics_counts(hard.view(B, T1, K), moments))
    # padded steps: no node potential and uniform moves, so the real steps' q(z) is the shorter chain's
    log_uniform = torch.tensor(-math.log(K), dtype=steps.dtype, device=steps.device)
    previous = -math.inf
    for iteration in range(1, max_iter + 1):
        mniw_stats, dirichlet_stats = ((mniw.expected_stats, dirichlet.expected_stats) if variational
                                       else (mniw.point_stats, dirichlet.point_stats))
        node = step_log_potentials(mniw_stats(dynamics), moments) * steps[..., None]
        node = torch.cat([node, torch.zeros_like(node[:, :1])], 1)  # z_T governs no step
        log_trans = torch.where(steps[..., None, None] > 0, dirichlet_stats(transitions), log_uniform)
        post = hmm_posterior(dirichlet_stats(initial_state), log_trans, node)
        bound = float(post.log_z.sum()) - (_kl(prior, initial_state, transitions, dynamics) if variational else 0.0)
        first = post.marginals[:, 0].sum(0)
        pairs = (post.pair_marginals * steps[..., None, None]).sum((0, 1))
        counts = _dynamics_counts(post.marginals[:, :-1] * steps[..., None], moments)
        initial_state, transitions = prior.initial_state + first, prior.transitions + pairs
        dynamics = _add(prior.dynamics, counts)
        if bound - previous < tol:
            break
        previous = bound
    return ARHMMFit(first, pairs, counts, post.marginals, bound, iteration, [])


def fit_ar_hmm(moments: StepMoments, features: torch.Tensor, prior: ARHMMPrior, steps: torch.Tensor | None = None,
               restarts: int = 5, max_iter: int = 50, tol: float = 1e-3,
               generator: torch.Generator | None = None, variational: bool = True) -> ARHMMFit:
    """Variational EM for the AR(1)-HMM (module docstring): `restarts` starts, each from the k-means of the
    steps' `features` (B, T-1, F) and at most `max_iter` EM steps; the one with the highest bound. `steps`
    (B, T-1): 1 on real steps, 0 on steps into padding (None: all real). With `variational` False, plain EM
    at the point estimate of q(theta) (E[pi], A = M, Q = Psi / nu: the uncertainty terms that let variational
    EM switch off states with few steps are left out) and the log-likelihood there as the bound."""
    if restarts < 1 or max_iter < 1:
        raise ValueError(f"restarts and max_iter must be >= 1, got {restarts} and {max_iter}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    steps = torch.ones(features.shape[:2], dtype=moments.cross.dtype, device=features.device) if steps is None \
        else steps.to(moments.cross.dtype)
    features = features.flatten(0, 1)
    inside = steps.flatten() > 0
    features = (features - features[inside].mean(0)) / features[inside].std(0).clamp(min=1e-12)
    fits = [_restart(moments, features, steps, prior, generator, max_iter, tol, variational) for _ in range(restarts)]
    best = max(fits, key=lambda fit: fit.bound)
    return best._replace(restart_bounds=[fit.bound for fit in fits])


def step_features(x: torch.Tensor) -> torch.Tensor:
    """What the k-means start clusters: each step's (x_t, x_t+1 - x_t) for trajectories x (B, T, n): (B, T-1, 2n)."""
    return torch.cat([x[:, :-1], x[:, 1:] - x[:, :-1]], -1)
