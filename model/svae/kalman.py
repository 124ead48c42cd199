"""Exact inference in a linear-Gaussian chain with Gaussian node potentials (SVAE.md section 4).

The chain's log-density, batched over B sequences of T steps with n-dimensional states:

    log p(x_1:T) + sum_t psi_t(x_t)
      = init(x_1) + sum_{t<T} pair(x_t, x_{t+1}) + sum_t (-1/2 x_t^T diag(J_t) x_t + h_t^T x_t)

with init(x) = -1/2 x^T J0 x + h0^T x + c0 and
pair(x, x') = -1/2 [x; x']^T [[J11, J12], [J12^T, J22]] [x; x'] + c_pair (the SVAE's expected LDS
potentials, built by `expected_lds_potentials`). log Z is the log-integral of its exponential,
constants included, so KL(q || p) = sum_t E_q[psi_t] - log Z.

Forward pass (information-form Kalman filter): the filtered potentials (J^f_t, h^f_t) of x_t given
psi_1..t, sequentially or by a parallel associative scan. Backward pass: the filter gives the
conditionals x_t | x_{t+1} ~ N(G_t x_{t+1} + b_t, P_t^-1) (`expfam.gaussian.condition` of the filtered
pair potential) with P_t = J^f_t + J11, G_t = -P_t^-1 J12, b_t = P_t^-1 h^f_t, so the RTS smoother (means,
covariances) and the backward sampler are one affine recursion, again sequential or an associative scan. All
batched over sequences, float64.

The sequential loops (`_InformationFilter`, `_Smoother`) have hand-written adjoints and do one or two
fused products per step on views made before the loop: at one short sequence per training step the cost
is the number of operations, not their flops.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Literal, NamedTuple

import torch

from model.expfam.gaussian import LOG_2PI, InfoGaussian
from model.expfam.mniw import MNIWExpectations
from model.expfam.niw import NIWExpectations, expected_gaussian_potential
from model.expfam.psd import psd_cholesky
from model.svae.scan import associative_scan

Method = Literal["sequential", "parallel"]
METHODS = ("sequential", "parallel")


class LDSPotentials(NamedTuple):
    """The chain's prior log-potentials: init_J (n, n), init_h (n,), init_const (), and the pair potentials,
    either shared by all steps and sequences (J11, J12, J22 (n, n), pair_const ()) or one per step of each
    sequence (J11, J12, J22 (B, T-1, n, n), pair_const (B, T-1); a switching LDS's expected dynamics)."""
    init_J: torch.Tensor
    init_h: torch.Tensor
    init_const: torch.Tensor
    J11: torch.Tensor
    J12: torch.Tensor
    J22: torch.Tensor
    pair_const: torch.Tensor


class LDSPosterior(NamedTuple):
    """q(x_1:T): log_z (B,), mean (B, T, n), cov (B, T, n, n), cross_cov = Cov(x_t, x_{t+1}) (B, T-1, n, n),
    reparameterised samples (S, B, T, n) (None when none were asked for) and the jitter retries of its
    Cholesky factorisations (a () tensor)."""
    log_z: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    cross_cov: torch.Tensor
    samples: torch.Tensor | None
    retries: torch.Tensor


def expected_lds_potentials(init: NIWExpectations, dynamics: MNIWExpectations) -> LDSPotentials:
    """The expected log-potentials E_q(theta)[log p(x_1)] and E_q(theta)[log p(x_{t+1} | x_t)] of an LDS with
    an NIW factor on the initial state and an MNIW factor on the dynamics (the E[A^T Q^-1 A] = J11 term keeps
    the uncertainty about A)."""
    init_J, init_h, init_const = expected_gaussian_potential(init)
    n = init_h.shape[-1]
    pair_const = 0.5 * dynamics.logdet - 0.5 * n * math.log(2 * math.pi)
    return LDSPotentials(init_J, init_h, init_const, dynamics.aqa, -dynamics.qa.mT, dynamics.q, pair_const)


def lds_posterior(prior: LDSPotentials, node_J: torch.Tensor, node_h: torch.Tensor, num_samples: int = 0,
                  method: Method = "sequential") -> LDSPosterior:
    """Posterior marginals, log Z and samples of the chain with diagonal node potentials.

    The filter gives P_t = J^f_t + J11_t (t < T), P_T = J^f_T and h^f_t; then x_t | x_{t+1}, psi_1..t ~
    N(G_t x_{t+1} + b_t, V_t) for t < T and x_T ~ N(b_T, V_T), with b = P^-1 h^f, V = P^-1, G = -P^-1 J12
    (G_T = 0), batched over time: one factorisation P = L L^T and one triangular solve, L^-1 [h^f | I | -J12],
    then the smoother (`_smooth_*`).

    Args:
        prior: the chain's log-potentials.
        node_J: (B, T, n) diagonal precisions of psi_t (>= 0; zero masks a step).
        node_h: (B, T, n) potential vectors of psi_t.
        num_samples: S reparameterised joint samples per sequence.
        method: "sequential" (a Python loop over time) or "parallel" (associative scans, O(log T) depth).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    filtered = _filter_parallel if method == "parallel" else _filter_sequential
    P, h_f, filter_retries = filtered(prior, node_J, node_h)
    B, T, n = node_h.shape
    factor = InfoGaussian.from_natural(P, h_f, symmetric=True)
    minus_J12 = (-prior.J12).expand(B, T - 1, n, n) if prior.J12.dim() == 2 else -prior.J12
    minus_J12 = torch.cat([minus_J12, minus_J12.new_zeros(B, 1, n, n)], 1)
    eye = torch.eye(n, dtype=P.dtype, device=P.device).expand(B, T, n, n)
    solved = torch.linalg.solve_triangular(factor.chol, torch.cat([h_f.unsqueeze(-1), eye, minus_J12], -1),
                                           upper=False)
    if num_samples:  # the draws of x_t | x_{t+1} (t < T), then of x_T
        eps = torch.cat([torch.randn(num_samples, B, T - 1, n, dtype=P.dtype, device=P.device),
                         torch.randn(num_samples, B, 1, n, dtype=P.dtype, device=P.device)], 2).permute(1, 2, 3, 0)
    else:
        eps = P.new_zeros(B, T, n, 0)
    smooth = _smooth_parallel if method == "parallel" else _Smoother.apply
    quadratic, mean, samples, cov, cross_cov = smooth(solved, eps)
    # log Z = the constants + the log-normalisers of the factors x_t | x_{t+1} (t < T) and of x_T
    pair_const = prior.pair_const.sum(-1) if prior.pair_const.dim() else (T - 1) * prior.pair_const
    log_z = (prior.init_const + pair_const + quadratic - factor.chol.diagonal(dim1=-2, dim2=-1).log().sum((-2, -1))
             + 0.5 * T * n * LOG_2PI)
    retries = filter_retries + factor.retried.sum()
    return LDSPosterior(log_z, mean, cov, cross_cov, samples if num_samples else None, retries)


def chain_extent(mask: torch.Tensor) -> torch.Tensor:
    """The frames inside each chain: True up to each sequence's last real frame, for a frame mask (B, T) bool
    (True on real frames). Masked frames inside the chain are missing observations (the dynamics bridge
    them); those after the last real frame are padding (`truncate_chain` cuts them off): (B, T) bool."""
    return mask.flip(-1).long().cumsum(-1).flip(-1) > 0


def truncate_chain(prior: LDSPotentials, within: torch.Tensor) -> LDSPotentials:
    """The chain cut after each sequence's last frame: the pair potential into every frame outside the chain
    (`within` (B, T) False, see `chain_extent`) becomes the standard normal -1/2 x'^T x' - n/2 log 2 pi, which
    neither depends on x nor carries evidence. With no node potential there, those frames integrate to exactly 1:
    log Z, the marginals of the frames inside and every expectation over them equal the shorter chain's, and the
    frames outside are N(0, I) under both the prior and the posterior. Returns per-step pair potentials
    (B, T-1, n, n), (B, T-1)."""
    B, T = within.shape
    n = prior.init_h.shape[-1]
    inside = within[:, 1:, None, None]
    zero = prior.J11.new_zeros(())
    eye = torch.eye(n, dtype=prior.J11.dtype, device=prior.J11.device)

    def per_step(pair: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        return torch.where(inside, pair.expand(B, T - 1, n, n) if pair.dim() == 2 else pair, outside)

    const = prior.pair_const.expand(B, T - 1) if prior.pair_const.dim() == 0 else prior.pair_const
    return prior._replace(J11=per_step(prior.J11, zero), J12=per_step(prior.J12, zero),
                          J22=per_step(prior.J22, eye),
                          pair_const=torch.where(within[:, 1:], const, -0.5 * n * LOG_2PI))


def chain_log_potential(prior: LDSPotentials, x: torch.Tensor) -> torch.Tensor:
    """init(x_1) + sum_{t<T} pair(x_t, x_{t+1}), constants included, of paths x (..., T, n): (...). The pair
    potentials may vary with time (J11, J12, J22 (..., T-1, n, n), pair_const (..., T-1)) or be shared."""
    now, later = x[..., :-1, :], x[..., 1:, :]
    pairs = (-0.5 * _quadratic(now, prior.J11, now) - _quadratic(now, prior.J12, later)
             - 0.5 * _quadratic(later, prior.J22, later) + prior.pair_const)
    return initial_log_potential(prior, x[..., 0, :]) + pairs.sum(-1)


def initial_log_potential(prior: LDSPotentials, first: torch.Tensor) -> torch.Tensor:
    """init(x_1), constant included, of first states x_1 (..., n): (...)."""
    return -0.5 * _quadratic(first, prior.init_J, first) + (prior.init_h * first).sum(-1) + prior.init_const


def _quadratic(left: torch.Tensor, matrix: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left^T matrix right, batched: (...)."""
    return (left.unsqueeze(-2) @ matrix @ right.unsqueeze(-1))[..., 0, 0]


def _node_precision(prior_J: torch.Tensor, node_J: torch.Tensor) -> torch.Tensor:
    """prior_J (..., n, n) + diag(node_J) (..., n)."""
    return prior_J + torch.diag_embed(node_J)


def _filter_sequential(prior: LDSPotentials, node_J: torch.Tensor,
                       node_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The information-form Kalman filter: P (B, T, n, n) (`lds_posterior`), h^f (B, T, n) and its jitter
    retries. Differentiable in the node potentials (not in the prior's, which are SVI's)."""
    if any(t.requires_grad for t in prior):
        raise ValueError("the sequential Kalman filter does not differentiate the prior potentials; detach them")
    return _InformationFilter.apply(node_J, node_h, prior.init_J, prior.init_h, prior.J11, prior.J12, prior.J22)


def _by_step(pair: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """A pair potential, shared (n, n) or per step (B, T-1, n, n), as (T-1, B, n, n)."""
    return pair.expand(T - 1, B, *pair.shape) if pair.dim() == 2 else pair.transpose(0, 1)


class _InformationFilter(torch.autograd.Function):
    """The filter loop with a hand-written adjoint, on the rows Z_t = [P_t ; h^f_t^T] (n+1, n), P_t as in
    `lds_posterior`. Step t factors P_t = L_t L_t^T, solves W_t = L_t^-1 [J12_t | h^f_t] and predicts
    Z_{t+1} = Z0_{t+1} - W_t^T W_t[:, :n] (the prediction J^p_{t+1} = J22_t - J12_t^T P_t^-1 J12_t,
    h^p_{t+1} = -J12_t^T P_t^-1 h^f_t), where Z0_{t+1} = [J22_t + J11_{t+1} + diag(J_{t+1}) ; h_{t+1}^T] holds
    everything that does not depend on the past, added before the loop. The adjoint runs back in time with the
    gains [K_t | b_t] = P_t^-1 [J12_t | h^f_t] on Y_t = [Abar_t | abar_t] (n, n+1):
    Y_t = [dL/dP_t | dL/dh^f_t] + K_t Y_{t+1} [[K_t^T, 0], [b_t^T, -1]], i.e. Abar_t = dL/dP_t
    + K_t (Abar_{t+1} K_t^T + abar_{t+1} b_t^T) and abar_t = dL/dh^f_t - K_t abar_{t+1}; the node gradients are
    diag(Abar_t) and abar_t. Per step one factorisation, one solve and one fused product forwards, two fused
    products backwards, on views made before the loop (indexing inside it would cost as much as the work)."""

    @staticmethod
    def forward(ctx, node_J, node_h, init_J, init_h, J11, J12, J22):
        B, T, n = node_h.shape
        rhs = node_h.new_empty(T - 1, B, n, n + 1)  # [J12_t | h^f_t], h^f_t copied in by step t
        rhs[..., :n] = _by_step(J12, B, T)
        if node_J.is_cpu and not torch.compiler.is_compiling():
            # psd_cholesky's fast path without its per-call read: plain factorisations, their status read once
            # at the end; if one failed, the loop runs again with psd_cholesky's jitter retry
            Z = _filter_rows(node_J, node_h, init_J, init_h, J11, J22)
            chols, solved, infos = _filter_loop(Z, rhs, torch.linalg.cholesky_ex)
            failed = bool(torch.stack(infos).any()) if infos else False
            retries = node_J.new_zeros((), dtype=torch.long)
        if not node_J.is_cpu or torch.compiler.is_compiling() or failed:
            Z = _filter_rows(node_J, node_h, init_J, init_h, J11, J22)
            chols, solved, retried = _filter_loop(Z, rhs, partial(psd_cholesky, symmetric=True))
            retries = torch.stack(retried).sum() if retried else node_J.new_zeros((), dtype=torch.long)
        if chols:
            ctx.save_for_backward(torch.stack(chols), torch.stack(solved))
        else:
            ctx.save_for_backward(node_J.new_zeros(0, B, n, n), node_J.new_zeros(0, B, n, n + 1))
        ctx.mark_non_differentiable(retries)
        Z = Z.transpose(0, 1)
        return Z[:, :, :n], Z[:, :, n], retries

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_P, grad_h_f, _grad_retries):
        chols, solved = ctx.saved_tensors
        T, B, n = chols.shape[0] + 1, chols.shape[1], chols.shape[2]
        Y = chols.new_zeros(T, B, n, n + 1)  # [dL/dP_t | dL/dh^f_t], then the adjoints in place
        if grad_P is not None:
            Y[..., :n] = grad_P.transpose(0, 1)
        if grad_h_f is not None:
            Y[..., n] = grad_h_f.transpose(0, 1)
        gains = torch.linalg.solve_triangular(chols.mT, solved, upper=True)  # [K_t | b_t] (T-1, B, n, n+1)
        E = torch.cat([gains.mT, gains.new_zeros(T - 1, B, n + 1, 1)], -1)  # [[K_t^T, 0], [b_t^T, -1]]
        E[..., n, n] = -1.0
        with torch.no_grad():  # as it runs anyway (once_differentiable); explicit for Dynamo's tracing (torch 2.4)
            Ys, Ks, Es = Y.unbind(0), gains[..., :n].unbind(0), E.unbind(0)
            for t in range(T - 2, -1, -1):
                Ys[t].baddbmm_(torch.bmm(Ks[t], Ys[t + 1]), Es[t])
        Y = Y.transpose(0, 1)
        return Y[..., :n].diagonal(dim1=-2, dim2=-1), Y[..., n], None, None, None, None, None


def _filter_rows(node_J: torch.Tensor, node_h: torch.Tensor, init_J: torch.Tensor, init_h: torch.Tensor,
                 J11: torch.Tensor, J22: torch.Tensor) -> torch.Tensor:
    """Z0 (T, B, n+1, n) of `_InformationFilter`: the rows [P_t ; h^f_t^T] without the predictions."""
    B, T, n = node_h.shape
    Z = node_h.new_empty(T, B, n + 1, n)  # time first: every Z[t] is contiguous
    Z[0, :, :n] = init_J
    Z[1:, :, :n] = _by_step(J22, B, T)
    Z[:-1, :, :n] += _by_step(J11, B, T)
    Z[:, :, :n].diagonal(dim1=-2, dim2=-1).add_(node_J.transpose(0, 1))
    Z[:, :, n] = node_h.transpose(0, 1)
    Z[0, :, n] += init_h
    return Z


@torch.no_grad()  # as autograd.Function.forward runs it; explicit for Dynamo, which traces it in place (torch 2.4)
def _filter_loop(Z: torch.Tensor, rhs: torch.Tensor, cholesky: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The filter's steps on Z (T, B, n+1, n) (Z0 in, Z out, in place) and rhs (T-1, B, n, n+1) (h^f copied in):
    the factors L_t and the solves W_t, and the failure flags that `cholesky` returned, per step."""
    n = Z.shape[-1]
    rows, precisions, h_f = Z.unbind(0), Z[:, :, :n].unbind(0), Z[:, :, n].unbind(0)
    rhs_steps, rhs_h = rhs.unbind(0), rhs[..., n].unbind(0)
    chols, solved, flags = [], [], []
    for t in range(len(rhs_steps)):
        chol, flag = cholesky(precisions[t])
        rhs_h[t].copy_(h_f[t])
        W = torch.linalg.solve_triangular(chol, rhs_steps[t], upper=False)
        rows[t + 1].baddbmm_(W.mT, W[..., :n], alpha=-1.0)
        chols.append(chol)
        solved.append(W)
        flags.append(flag)
    return chols, solved, flags


def _combine_chain(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...],
                   retries: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Integrate out the shared middle state of two adjacent chain segments.

    A segment is a potential over its (first, last) states, -1/2 [s; e]^T [[A, C], [C^T, D]] [s; e]
    + a^T s + d^T e, stored as (A, C, D, a, d). Combining (s, m) with (m, e) integrates m out
    (`expfam.gaussian.marginalise` with x_a = (s, e), x_b = m, written out per block so that the scan builds
    no (2n, 2n) matrices) and gives the potential over (s, e); the constants are not tracked. The
    factorisation's jitter-retry count is appended to `retries`.
    """
    A1, C1, D1, a1, d1 = a
    A2, C2, D2, a2, d2 = b
    n = A1.shape[-1]
    chol, retried = psd_cholesky(D1 + A2, symmetric=True)
    retries.append(retried.sum())
    W = torch.linalg.solve_triangular(chol, torch.cat([C1.mT, C2, (d1 + a2).unsqueeze(-1)], -1), upper=False)
    W1, W2, w = W[..., :n], W[..., n:2 * n], W[..., 2 * n:]
    return (A1 - W1.mT @ W1, -W1.mT @ W2, D2 - W2.mT @ W2,
            a1 - (W1.mT @ w).squeeze(-1), d2 - (W2.mT @ w).squeeze(-1))


def _filter_parallel(prior: LDSPotentials, node_J: torch.Tensor,
                     node_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_filter_sequential` by an associative scan over chain segments: segment t is the pair potential
    (x_{t-1}, x_t) plus psi_t (segment 1: the initial potential plus psi_1, not coupled to anything),
    and the prefix ending at t is a potential over (x_0, x_t) whose x_t part is (J^f_t, h^f_t)."""
    B, T, n = node_h.shape
    zeros = node_J.new_zeros(B, 1, n, n)
    A = torch.cat([zeros, prior.J11.expand(B, T - 1, n, n)], 1)
    C = torch.cat([zeros, prior.J12.expand(B, T - 1, n, n)], 1)
    D = _node_precision(torch.cat([prior.init_J.expand(B, 1, n, n), prior.J22.expand(B, T - 1, n, n)], 1), node_J)
    d = node_h + torch.cat([prior.init_h.expand(B, 1, n), node_h.new_zeros(B, T - 1, n)], 1)
    retries = [node_J.new_zeros((), dtype=torch.long)]
    *_, J_f, _, h_f = associative_scan(lambda x, y: _combine_chain(x, y, retries),
                                       (A, C, D, torch.zeros_like(d), d))
    return J_f + torch.cat([A[:, 1:], zeros], 1), h_f, torch.stack(retries).sum()


def _compose_affine(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """(G1, c1, V1) . (G2, c2, V2): v -> G1 (G2 v + c2) + c1, with noise covariance G1 V2 G1^T + V1."""
    G1, c1, V1 = a
    G2, c2, V2 = b
    return G1 @ G2, G1 @ c2 + c1, G1 @ V2 @ G1.mT + V1


def _smooth_parallel(solved: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The smoother and sampler from the solves [L^-1 h^f | L^-1 | -L^-1 J12] (B, T, n, 1 + 2n) and the
    noise eps (B, T, n, S): the moments L^-T [L^-1 h^f | L^-1 h^f + eps | L^-1 | -L^-1 J12] = [b | b + L^-T eps |
    V | G], then v_t = G_t v_{t+1} + c_t and Sigma_t = G_t Sigma_{t+1} G_t^T + V_t back from t = T for the
    columns c = [b | b + L^-T eps] (the means, the samples) by a reverse associative scan of affine maps.
    Returns 1/2 sum_t |L_t^-1 h^f_t|^2 (B,), means (B, T, n), samples (S, B, T, n), covariances (B, T, n, n)
    and Cov(x_t, x_{t+1}) = G_t Sigma_{t+1} (B, T-1, n, n)."""
    n, S = solved.shape[-2], eps.shape[-1]
    w = solved[..., :1]
    moments = solved[..., 1:1 + n].mT @ torch.cat([w, w + eps, solved[..., 1:]], -1)
    G = moments[:, :-1, :, 1 + S + n:]
    _, values, cov = associative_scan(_compose_affine, (torch.cat([G, torch.zeros_like(G[:, :1])], 1),
                                                       moments[..., :1 + S], moments[..., 1 + S:1 + S + n]),
                                      reverse=True)
    return (0.5 * (w[..., 0] ** 2).sum((-2, -1)), values[..., 0], values[..., 1:].permute(3, 0, 1, 2), cov,
            G @ cov[:, 1:])


class _Smoother(torch.autograd.Function):
    """`_smooth_parallel` by a loop back in time on Y_t = [v_t | Sigma_t], the columns v = [b + L^-T eps | b]
    (the samples, the means): with the identity on the value columns,
    Y_t = (G_t Y_{t+1}) blockdiag(I, G_t^T) + [c_t | V_t], one fused product pair per step. Many samples
    (more than n) run on their own, v_t = G_t v_{t+1} + c_t, as the block-diagonal factor would grow with
    their square. The hand-written adjoint runs forwards in time, [lambda_t | Lambda_t] = [dL/dv_t | dL/dSigma_t]
    + (G_{t-1}^T [lambda_{t-1} | Lambda_{t-1}]) blockdiag(I, G_{t-1}), and everything else (the moments'
    product, the cross-covariances, the gradient in G) is batched over time. Time runs along dim 0 inside."""

    @staticmethod
    def forward(ctx, solved, eps):
        B, T, n, _ = solved.shape
        S = eps.shape[-1]
        cols, alone = S + 1, S if S >= n else 0  # value columns; the samples that run on their own
        w = solved[..., :1]
        X = torch.cat([w + eps, w, solved[..., 1:]], -1).transpose(0, 1)  # (T, B, n, cols + 2n)
        moments = torch.matmul(X[..., cols:cols + n].mT, X)  # [b + L^-T eps | b | V | G]
        G = moments[:-1, ..., cols + n:].contiguous()  # (T-1, B, n, n)
        F = G.new_zeros(T - 1, B, cols + n - alone, cols + n - alone)  # blockdiag(I, G_t^T)
        F[..., :-n, :-n].diagonal(dim1=-2, dim2=-1).fill_(1.0)
        F[..., -n:, -n:] = G.mT
        Y = moments[..., :cols + n].contiguous()  # [c | V], then [v | Sigma] in place
        with torch.no_grad():  # as forward runs anyway; explicit for Dynamo's tracing (torch 2.4)
            fused, single, Gs, Fs = Y[..., alone:].unbind(0), Y[..., :alone].unbind(0), G.unbind(0), F.unbind(0)
            for t in range(T - 2, -1, -1):
                fused[t].baddbmm_(torch.bmm(Gs[t], fused[t + 1]), Fs[t])
                if alone:
                    single[t].baddbmm_(Gs[t], single[t + 1])
        cross = torch.matmul(G, Y[1:, ..., cols:])
        ctx.save_for_backward(X, G, F, Y)
        Y = Y.transpose(0, 1)
        return (0.5 * (w[..., 0] ** 2).sum((-2, -1)), Y[..., S], Y[..., :S].permute(3, 0, 1, 2), Y[..., cols:],
                cross.transpose(0, 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_quadratic, grad_mean, grad_samples, grad_cov, grad_cross):
        X, G, F, Y = ctx.saved_tensors
        T, B, n, width = Y.shape
        cols = width - n
        S = cols - 1
        alone = S if S >= n else 0
        adj = Y.new_zeros(T, B, n, width)  # [dL/dv_t | dL/dSigma_t], then the adjoints in place
        if grad_samples is not None:
            adj[..., :S] = grad_samples.permute(2, 1, 3, 0)
        if grad_mean is not None:
            adj[..., S] = grad_mean.transpose(0, 1)
        if grad_cov is not None:
            adj[..., cols:] = grad_cov.transpose(0, 1)
        covs = Y[1:, ..., cols:]
        if grad_cross is not None:  # cross_t = G_t Sigma_{t+1}
            grad_cross = grad_cross.transpose(0, 1)
            adj[1:, ..., cols:] += G.mT @ grad_cross
        with torch.no_grad():  # as backward runs anyway (once_differentiable); explicit for Dynamo (torch 2.4)
            fused, single = adj[..., alone:].unbind(0), adj[..., :alone].unbind(0)
            G_T, F_T = G.mT.unbind(0), F.mT.unbind(0)
            for t in range(1, T):
                fused[t].baddbmm_(torch.bmm(G_T[t - 1], fused[t - 1]), F_T[t - 1])
                if alone:
                    single[t].baddbmm_(G_T[t - 1], single[t - 1])
        lam, Lam = adj[:-1, ..., :cols], adj[:-1, ..., cols:]
        grad_G = lam @ Y[1:, ..., :cols].mT + (Lam + Lam.mT) @ G @ covs
        if grad_cross is not None:
            grad_G += grad_cross @ covs.mT
        grad_moments = torch.cat([adj, torch.cat([grad_G, grad_G.new_zeros(1, B, n, n)], 0)], -1)
        # moments = X[..., cols:cols+n]^T X, X = [w + eps | w | L^-1 | -L^-1 J12]
        grad_X = torch.matmul(X[..., cols:cols + n], grad_moments)
        grad_X[..., cols:cols + n] += torch.matmul(X, grad_moments.mT)
        grad_w = grad_X[..., :cols].sum(-1)
        if grad_quadratic is not None:
            grad_w += grad_quadratic[:, None] * X[..., S]
        grad_solved = torch.cat([grad_w.unsqueeze(-1), grad_X[..., cols:]], -1)
        return grad_solved.transpose(0, 1), None
