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

from model.expfam import niw
from model.expfam.gaussian import InfoGaussian


class MixtureExpectations(NamedTuple):
    """What local inference needs of q(theta): E[log pi] (K,), E[Sigma_k^-1] J (K, d, d),
    E[Sigma_k^-1 mu_k] h (K, d) and const (K,), where
    E_theta[log N(x | mu_k, Sigma_k)] = -1/2 x^T J_k x + h_k^T x + const_k."""
    log_weights: torch.Tensor
    J: torch.Tensor
    h: torch.Tensor
    const: torch.Tensor


class MeanFieldPosterior(NamedTuple):
    """q(z) q(x) for B points: responsibilities (B, K); q(x) (batch (B,)), E[x] (B, d), E[x x^T] (B, d, d);
    the local KL (B,); which Cholesky factorisations needed a jitter retry, in every sweep (bool, (..., B)),
    the sweeps without gradient, and S reparameterised samples of q(x) (S, B, d) when asked for."""
    responsibilities: torch.Tensor
    gaussian: InfoGaussian
    mean: torch.Tensor
    second: torch.Tensor
    kl: torch.Tensor
    retried: torch.Tensor
    iterations: torch.Tensor | int = 1  # sweeps without gradient: a 0-d long tensor from local_meanfield
    samples: torch.Tensor | None = None

    @property
    def retries(self) -> torch.Tensor:
        """The number of jitter retries over all sweeps: () int64."""
        return self.retried.sum()


def mixture_expectations(log_weights: torch.Tensor, components: niw.NIWExpectations) -> MixtureExpectations:
    """The mixture's potentials from log weights (K,) (E[log pi] under q(pi), or log pi at a point) and the
    components' NIW statistics (expected, or at a point)."""
    J, h, const = niw.expected_gaussian_potential(components)
    return MixtureExpectations(log_weights, J, h, const)


def meanfield_update(node_J: torch.Tensor, node_h: torch.Tensor, responsibilities: torch.Tensor,
                     mix: MixtureExpectations) -> MeanFieldPosterior:
    """One sweep: q(x) from the responsibilities (B, K), then q(z) from q(x), and the local KL.
    node_J: (B, d) diagonal precisions, node_h: (B, d). Written with few, fused kernels: at these
    sizes the cost is per operation, not per flop."""
    B, d = node_h.shape
    J_flat = mix.J.reshape(-1, d * d)  # (K, d*d)
    J = (responsibilities @ J_flat).view(B, d, d)  # symmetric: a combination of symmetric J_k
    J.diagonal(dim1=-2, dim2=-1).add_(node_J)
    q_x = InfoGaussian.from_natural(J, torch.addmm(node_h, responsibilities, mix.h), symmetric=True)
    mean, cov = q_x.moments()
    second = torch.baddbmm(cov, mean.unsqueeze(-1), mean.unsqueeze(-2))
    g = torch.addmm(mean @ mix.h.mT, second.view(B, d * d), J_flat.mT, alpha=-0.5)  # (B, K)
    logits = g + (mix.log_weights + mix.const)
    log_responsibilities = torch.log_softmax(logits, -1)
    log_normalizer_z = logits[:, 0] - log_responsibilities[:, 0]
    gaussian_kl = ((node_h * mean).sum(-1) - 0.5 * (node_J * second.diagonal(dim1=-2, dim2=-1)).sum(-1)
                   - q_x.log_normalizer(mean))  # <psi, E t(x)> - A(q(x))
    kl = gaussian_kl + (responsibilities * g).sum(-1) - log_normalizer_z
    return MeanFieldPosterior(log_responsibilities.exp(), q_x, mean, second, kl, q_x.retried)


def collapsed_responsibilities(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations) -> torch.Tensor:
    """q(z) with x integrated out exactly under the expected potentials: r_k proportional to
    exp(E[log pi_k] + const_k + A(psi + (J_k, h_k))), the integral over x of psi(x) exp(E[log pi_k
    N(x | mu_k, Sigma_k)]) (for point globals, pi_k N(J^-1 h | mu_k, Sigma_k + J^-1)).
    node_J, node_h (B, d) -> (B, K)."""
    J = mix.J.expand(len(node_h), -1, -1, -1).clone()  # (B, K, d, d)
    J.diagonal(dim1=-2, dim2=-1).add_(node_J[:, None])
    joint = InfoGaussian.from_natural(J, node_h[:, None] + mix.h, symmetric=True)
    return torch.softmax(joint.log_normalizer() + mix.log_weights + mix.const, -1)


def local_meanfield(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations, max_iter: int = 100,
                    tol: float = 1e-3) -> MeanFieldPosterior:
    """Mean-field inference: up to `max_iter` sweeps without gradient, started from the responsibilities
    with x integrated out (`collapsed_responsibilities`; from uniform ones, q(x) is pulled between the
    components and can settle on the wrong one, issue 26), until the batch-mean local KL changes by less than
    `tol` nats, then one differentiable sweep from the converged responsibilities (the path by which the
    encoder learns from the local KL).
    Returns the posterior of the last sweep, with the number of sweeps without gradient and the
    jitter retries of all sweeps. The stopping test reads one number per sweep: the sweep count is
    data-dependent by design; the sweep itself reads nothing back."""
    previous = math.inf
    retried = []
    with torch.no_grad():
        node_J_, node_h_ = node_J.detach(), node_h.detach()
        responsibilities = collapsed_responsibilities(node_J_, node_h_, mix)
        while len(retried) < max_iter:
            post = meanfield_update(node_J_, node_h_, responsibilities, mix)
            responsibilities = post.responsibilities
            retried.append(post.retried)
            current = float(post.kl.mean())
            if abs(previous - current) < tol:
                break
            previous = current
    post = meanfield_update(node_J, node_h, responsibilities, mix)
    return post._replace(retried=torch.stack([*retried, post.retried]),
                         iterations=torch.tensor(len(retried), device=node_h.device))
