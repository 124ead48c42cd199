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

from typing import NamedTuple

import torch

from model.expfam import niw
from model.expfam.gaussian import InfoGaussian, add_potentials, expected_log_potential, mix_potentials
from model.svae.meanfield import coordinate_ascent


class MixtureExpectations(NamedTuple):
    """What local inference needs of q(theta): E[log pi] (K,), E[Sigma_k^-1] J (K, n, n),
    E[Sigma_k^-1 mu_k] h (K, n) and const (K,), where
    E_theta[log N(x | mu_k, Sigma_k)] = -1/2 x^T J_k x + h_k^T x + const_k."""
    log_weights: torch.Tensor
    J: torch.Tensor
    h: torch.Tensor
    const: torch.Tensor


class MeanFieldPosterior(NamedTuple):
    """q(z) q(x) for B points: responsibilities (B, K); q(x) (batch (B,)), E[x] (B, n), E[x x^T] (B, n, n);
    the local KL (B,); the jitter retries of each point's Cholesky factorisations (bool (B,) for one sweep,
    counts over all sweeps from `local_meanfield`), the sweeps without gradient, and S reparameterised samples of
    q(x) (S, B, n) when asked for."""
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
        """The number of jitter retries: () int64."""
        return self.retried.sum()


def mixture_expectations(log_weights: torch.Tensor, components: niw.NIWExpectations) -> MixtureExpectations:
    """The mixture's potentials from log weights (K,) (E[log pi] under q(pi), or log pi at a point) and the
    components' NIW statistics (expected, or at a point)."""
    J, h, const = niw.expected_gaussian_potential(components)
    return MixtureExpectations(log_weights, J, h, const)


class ComponentStep(NamedTuple):
    """q(x) of each of B points (or frames) given its component weights w (B, K): the Gaussian q(x) (batch (B,)),
    E[x] (B, n), E[x x^T] (B, n, n); g (B, K), g_k = -1/2 <E[Sigma_k^-1], E xx^T> + <E[Sigma_k^-1 mu_k], E x>
    (E_q(x) E_theta[log N(x | mu_k, Sigma_k)] is g_k + const_k); and q(x)'s part of the local KL (B,),
    <psi, E t(x)> - A(q(x)) + <w, g>, to which the discrete latents' part, -log Z_z, is added."""
    gaussian: InfoGaussian
    mean: torch.Tensor
    second: torch.Tensor
    g: torch.Tensor
    kl: torch.Tensor


def component_step(node_J: torch.Tensor, node_h: torch.Tensor, weights: torch.Tensor,
                   mix: MixtureExpectations) -> ComponentStep:
    """The x-step of mean field over any discrete latents with Gaussian components: q(x) from the node
    potentials (B, n) and the weights (B, K) of the components. Written with few, fused kernels: at these sizes
    the cost is per operation, not per flop."""
    J = mix_potentials(weights, mix.J)  # symmetric: a combination of symmetric J_k
    J.diagonal(dim1=-2, dim2=-1).add_(node_J)
    q_x = InfoGaussian.from_natural(J, torch.addmm(node_h, weights, mix.h), symmetric=True)
    mean, cov = q_x.moments()
    second = torch.baddbmm(cov, mean.unsqueeze(-1), mean.unsqueeze(-2))
    g = expected_log_potential(mix.J, second, mix.h, mean)  # (B, K)
    gaussian_kl = ((node_h * mean).sum(-1) - 0.5 * (node_J * second.diagonal(dim1=-2, dim2=-1)).sum(-1)
                   - q_x.log_normalizer(mean))  # <psi, E t(x)> - A(q(x))
    return ComponentStep(q_x, mean, second, g, gaussian_kl + (weights * g).sum(-1))


def meanfield_update(node_J: torch.Tensor, node_h: torch.Tensor, responsibilities: torch.Tensor,
                     mix: MixtureExpectations) -> MeanFieldPosterior:
    """One sweep: q(x) from the responsibilities (B, K) (`component_step`), then q(z) from q(x), and the local
    KL. node_J: (B, n) diagonal precisions, node_h: (B, n)."""
    step = component_step(node_J, node_h, responsibilities, mix)
    logits = step.g + (mix.log_weights + mix.const)
    log_responsibilities = torch.log_softmax(logits, -1)
    log_normalizer_z = logits[:, 0] - log_responsibilities[:, 0]
    return MeanFieldPosterior(log_responsibilities.exp(), step.gaussian, step.mean, step.second,
                              step.kl - log_normalizer_z, step.gaussian.retried)


def collapsed_log_evidence(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations) -> torch.Tensor:
    """A(psi + (J_k, h_k)) (B, K): with const_k, the log of the integral over x of psi(x) exp(E[log N(x | mu_k,
    Sigma_k)]), each component's evidence with x integrated out exactly. node_J, node_h (B, n)."""
    J, h = add_potentials((torch.diag_embed(node_J)[:, None], node_h[:, None]), (mix.J, mix.h))  # (B, K, n, n)
    return InfoGaussian.from_natural(J, h, symmetric=True).log_normalizer()


def collapsed_responsibilities(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations) -> torch.Tensor:
    """q(z) with x integrated out exactly under the expected potentials: r_k proportional to
    exp(E[log pi_k] + const_k + A(psi + (J_k, h_k))) (`collapsed_log_evidence`; for point globals,
    pi_k N(J^-1 h | mu_k, Sigma_k + J^-1)). node_J, node_h (B, n) -> (B, K)."""
    return torch.softmax(collapsed_log_evidence(node_J, node_h, mix) + mix.log_weights + mix.const, -1)


def local_meanfield(node_J: torch.Tensor, node_h: torch.Tensor, mix: MixtureExpectations, max_iter: int = 100,
                    tol: float = 1e-3) -> MeanFieldPosterior:
    """Mean-field inference by `coordinate_ascent`, started from the responsibilities with x integrated out
    (`collapsed_responsibilities`; from uniform ones, q(x) is pulled between the components and can settle on
    the wrong one, issue 26). Returns the posterior of the last sweep, with the number of sweeps without
    gradient and the jitter retries of all sweeps; the sweep itself reads nothing back."""
    detached = node_J.detach(), node_h.detach()

    def sweep(responsibilities: torch.Tensor, differentiable: bool) -> tuple[MeanFieldPosterior, torch.Tensor]:
        post = meanfield_update(*((node_J, node_h) if differentiable else detached), responsibilities, mix)
        return post, post.responsibilities

    with torch.no_grad():
        start = collapsed_responsibilities(*detached, mix)
    post, retried, iterations = coordinate_ascent(sweep, start, max_iter, tol, retries=lambda p: p.retried.long())
    return post._replace(retried=retried, iterations=iterations)
