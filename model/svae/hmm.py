"""Forward-backward for a hidden Markov chain of discrete states, in log space, batched over sequences
(SVAE.md section 6).

The chain z_1:T in {1..K} has the (possibly unnormalised) log-potential
    log_init[z_1] + sum_{t<T} log_trans[z_t, z_t+1] + sum_t node[t, z_t],
with one transition matrix for every step (K, K) or one per step of each chain (..., T-1, K, K), and q(z) is
its normalised exponential: log Z, the marginals q(z_t = k) and the pair marginals
q(z_t = j, z_t+1 = k). Each step of the recursions is a (K, K) matrix product on exponentials shifted by
their maximum (exact in log space up to underflow below e^-700 in float64); the loop over time is the
only Python loop. Differentiable by autograd.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class HMMPosterior(NamedTuple):
    """q(z_1:T): log_z (...), marginals (..., T, K), pair_marginals (..., T-1, K, K) ([j, k]: z_t = j, z_t+1 = k)."""
    log_z: torch.Tensor
    marginals: torch.Tensor
    pair_marginals: torch.Tensor


def _log_matmul(log_v: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """log(exp(log_v) @ matrix) for log_v (..., K) and a nonnegative matrix (K, K) or (..., K, K), shifted by
    the max."""
    shift = log_v.amax(-1, keepdim=True).detach()
    v = (log_v - shift).exp()
    product = v @ matrix if matrix.dim() == 2 else (v.unsqueeze(-2) @ matrix).squeeze(-2)
    return product.log() + shift


def _steps(matrix: torch.Tensor, T: int) -> list[torch.Tensor]:
    """A transition matrix shared (K, K) or per step (..., T-1, K, K), as T-1 matrices."""
    return [matrix] * (T - 1) if matrix.dim() == 2 else list(matrix.unbind(-3))


def hmm_forward(log_init: torch.Tensor, log_trans: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """Forward messages log alpha_t(k) = log sum over z_1:t-1 of the potential up to t with z_t = k:
    log_init (K,), log_trans (K, K) or (..., T-1, K, K), node (..., T, K) -> (..., T, K)."""
    steps = _steps(log_trans.exp(), node.shape[-2])
    alphas = [log_init + node[..., 0, :]]
    for trans, node_t in zip(steps, node.unbind(-2)[1:]):
        alphas.append(_log_matmul(alphas[-1], trans) + node_t)
    return torch.stack(alphas, -2)


def hmm_log_normalizer(log_init: torch.Tensor, log_trans: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """log Z = log sum over all paths of the chain's potential (the forward pass alone): (...)."""
    return torch.logsumexp(hmm_forward(log_init, log_trans, node)[..., -1, :], -1)


def hmm_posterior(log_init: torch.Tensor, log_trans: torch.Tensor, node: torch.Tensor) -> HMMPosterior:
    """log Z, marginals and pair marginals of the chain with node log-potentials `node` (..., T, K)."""
    log_alpha = hmm_forward(log_init, log_trans, node)
    steps = _steps(log_trans.exp().mT, node.shape[-2])
    betas = [torch.zeros_like(node[..., 0, :])]  # log beta_T = 0
    for trans_t, node_next in zip(steps[::-1], node.unbind(-2)[:0:-1]):  # node_T, ..., node_2
        betas.append(_log_matmul(node_next + betas[-1], trans_t))  # log beta_t = log sum_k P[., k] e^{...}
    log_beta = torch.stack(betas[::-1], -2)
    log_z = torch.logsumexp(log_alpha[..., -1, :], -1)
    marginals = torch.softmax(log_alpha + log_beta, -1)
    after = (node[..., 1:, :] + log_beta[..., 1:, :]).unsqueeze(-2)  # (..., T-1, 1, K)
    log_pairs = log_alpha[..., :-1, :].unsqueeze(-1) + log_trans + after - log_z[..., None, None, None]
    return HMMPosterior(log_z, marginals, log_pairs.exp())


def expected_chain_potential(post: HMMPosterior, log_init: torch.Tensor, log_trans: torch.Tensor,
                             node: torch.Tensor) -> torch.Tensor:
    """E_q[log_init[z_1] + sum_t log_trans[z_t, z_t+1] + sum_t node[t, z_t]] under any q(z) given by its marginals
    and pair marginals (`post`), for potentials shaped as `hmm_posterior`'s: (...)."""
    return ((post.marginals[..., 0, :] * log_init).sum(-1) + (post.pair_marginals * log_trans).sum((-3, -2, -1))
            + (post.marginals * node).sum((-2, -1)))
