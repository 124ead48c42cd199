"""Local mean-field inference for the SVAE-GMM (SVAE.md section 3), batched over B points and
K components (no Python loop over either).

Model given the globals: z ~ Cat(pi), x | z = k ~ N(mu_k, Sigma_k); recognition node potentials
psi(x) = -1/2 x^T diag(node_J) x + node_h^T x. Mean field q(z) q(x):
    q(x) natural params = psi + sum_k r_k (E[Sigma_k^-1], E[Sigma_k^-1 mu_k])
    l_k = E[log pi_k] + E_q(x) E_theta[log N(x | mu_k, Sigma_k)],   r = softmax(l)
Local KL (of q(z) q(x) from p(z, x | theta), in expectation over q(theta)):
    KL = <psi, E t(x)> - A(q(x)) + sum_k r_k g_k - logsumexp(l)
with g_k = -1/2 <E[Sigma_k^-1], E xx^T> + <E[Sigma_k^-1 mu_k], E x> and r the responsibilities
q(x) was built from; q(z) is softmax(l).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from model.expfam import dirichlet, niw
from model.expfam.psd import psd_cholesky


class MixtureExpectations(NamedTuple):
    """What local inference needs of q(theta): E[log pi] (K,), E[Sigma_k^-1] J (K, d, d),
    E[Sigma_k^-1 mu_k] h (K, d) and const (K,), where
    E_theta[log N(x | mu_k, Sigma_k)] = -1/2 x^T J_k x + h_k^T x + const_k."""
    log_weights: torch.Tensor
    J: torch.Tensor
    h: torch.Tensor
    const: torch.Tensor


class LocalPosterior(NamedTuple):
    """q(z) q(x) for B points: responsibilities (B, K); q(x) in natural form J (B, d, d), h (B, d),
    the Cholesky factor of J, E[x] (B, d), E[x x^T] (B, d, d); local KL (B,)."""
    responsibilities: torch.Tensor
    J: torch.Tensor
    h: torch.Tensor
    chol: torch.Tensor
    mean: torch.Tensor
    second: torch.Tensor
    kl: torch.Tensor


def mixture_expectations(dirichlet_natural: torch.Tensor, niw_expected: niw.NIWExpectations) -> MixtureExpectations:
    """Expected parameters of the K mixture components under q(pi) q(mu, Sigma), from the Dirichlet's
    natural parameters (K,) and the NIWs' expected statistics."""
    J, h, const = niw.expected_gaussian_potential(niw_expected)
    return MixtureExpectations(dirichlet.expected_stats(dirichlet_natural), J, h, const)


def meanfield_update(node_J: torch.Tensor, node_h: torch.Tensor, responsibilities: torch.Tensor,
                     mix: MixtureExpectations) -> LocalPosterior:
    """One sweep: q(x) from the responsibilities (B, K), then q(z) from q(x), and the local KL.
    node_J: (B, d) diagonal precisions, node_h: (B, d). Written with few, fused kernels: at these
    sizes the cost is per operation, not per flop."""
    B, d = node_h.shape
    J_flat = mix.J.reshape(-1, d * d)  # (K, d*d)
    J = (responsibilities @ J_flat).view(B, d, d)  # symmetric: a combination of symmetric J_k
    J.diagonal(dim1=-2, dim2=-1).add_(node_J)
    h = torch.addmm(node_h, responsibilities, mix.h)
    chol = psd_cholesky(J, symmetric=True)
    cov = torch.cholesky_inverse(chol)
    mean = (cov @ h.unsqueeze(-1)).squeeze(-1)
    second = torch.baddbmm(cov, mean.unsqueeze(-1), mean.unsqueeze(-2))
    g = torch.addmm(mean @ mix.h.mT, second.view(B, d * d), J_flat.mT, alpha=-0.5)  # (B, K)
    logits = g + (mix.log_weights + mix.const)
    log_responsibilities = torch.log_softmax(logits, -1)
    log_normalizer_z = logits[:, 0] - log_responsibilities[:, 0]
    # <psi, E t(x)> - A(q(x)), with A = 1/2 h^T mean - 1/2 log|J| + d/2 log 2 pi
    gaussian_kl = (((node_h - 0.5 * h) * mean).sum(-1) - 0.5 * (node_J * second.diagonal(dim1=-2, dim2=-1)).sum(-1)
                   + chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * d * math.log(2 * math.pi))
    kl = gaussian_kl + (responsibilities * g).sum(-1) - log_normalizer_z
    return LocalPosterior(log_responsibilities.exp(), J, h, chol, mean, second, kl)


def local_meanfield(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations, max_iter: int = 100,
                    tol: float = 1e-3) -> tuple[LocalPosterior, int]:
    """Mean-field inference: up to `max_iter` sweeps without gradient from uniform responsibilities,
    until the batch-mean local KL changes by less than `tol` nats, then one differentiable sweep
    from the converged responsibilities (the path by which the encoder learns from the local KL).
    Returns the posterior of the last sweep and the number of sweeps without gradient."""
    B, K = node_h.shape[0], mix.h.shape[0]
    responsibilities = node_h.new_full((B, K), 1.0 / K)
    previous = math.inf
    iterations = 0
    with torch.no_grad():
        node_J_, node_h_ = node_J.detach(), node_h.detach()
        while iterations < max_iter:
            post = meanfield_update(node_J_, node_h_, responsibilities, mix)
            responsibilities = post.responsibilities
            iterations += 1
            current = float(post.kl.mean())
            if abs(previous - current) < tol:
                break
            previous = current
    return meanfield_update(node_J, node_h, responsibilities, mix), iterations
