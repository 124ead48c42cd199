"""Kalman filter / RTS smoother / backward sampler against a dense Gaussian built from the chain's
block-tridiagonal precision, the parallel scans against the sequential loops, and the expected LDS
potentials against exact Gaussian log-densities (float64)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from model.expfam import mniw, niw
from model.svae.kalman import LDSPotentials, expected_lds_potentials, lds_posterior
from model.svae.scan import associative_scan
from tests.references import dense_joint

DT = torch.float64


def random_pd(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=DT)
    return a @ a.mT / n + 0.5 * torch.eye(n, dtype=DT)


def random_prior(n: int, gen: torch.Generator) -> LDSPotentials:
    pair = random_pd(2 * n, gen)
    return LDSPotentials(random_pd(n, gen), torch.randn(n, generator=gen, dtype=DT),
                         torch.randn((), generator=gen, dtype=DT), pair[:n, :n], pair[:n, n:], pair[n:, n:],
                         torch.randn((), generator=gen, dtype=DT))


def random_nodes(B: int, T: int, n: int, gen: torch.Generator, masked: bool = True):
    node_J = 2 * torch.rand(B, T, n, generator=gen, dtype=DT)
    node_h = torch.randn(B, T, n, generator=gen, dtype=DT)
    if masked and T > 1 and B > 1:  # zero potentials: unobserved steps
        node_J[0, T // 2], node_h[0, T // 2] = 0.0, 0.0
        node_J[1, -1], node_h[1, -1] = 0.0, 0.0
    return node_J, node_h


def block(cov: torch.Tensor, n: int, s: int, t: int) -> torch.Tensor:
    return cov[:, s * n:(s + 1) * n, t * n:(t + 1) * n]


@pytest.mark.parametrize("method", ["sequential", "parallel"])
@pytest.mark.parametrize("T,n", [(1, 2), (2, 1), (3, 3), (5, 2), (6, 3), (6, 1)])
def test_matches_dense_gaussian(method, T, n):
    gen = torch.Generator().manual_seed(T * 10 + n)
    prior = random_prior(n, gen)
    node_J, node_h = random_nodes(3, T, n, gen)
    log_z, mean, cov = dense_joint(prior, node_J, node_h)
    post = lds_posterior(prior, node_J, node_h, method=method)
    tol = dict(atol=1e-8, rtol=0)
    torch.testing.assert_close(post.log_z, log_z, **tol)
    torch.testing.assert_close(post.mean, mean.reshape(3, T, n), **tol)
    torch.testing.assert_close(post.cov, torch.stack([block(cov, n, t, t) for t in range(T)], 1), **tol)
    assert post.cross_cov.shape == (3, T - 1, n, n)
    for t in range(T - 1):
        torch.testing.assert_close(post.cross_cov[:, t], block(cov, n, t, t + 1), **tol)  # Cov(x_t, x_t+1)


def test_log_z_gradient_is_the_posterior_moments():
    """log Z is the log normaliser of q(x): d/dh_t = E[x_t], d/dJ_t = -1/2 E[x_t^2] (diagonal J)."""
    gen = torch.Generator().manual_seed(1)
    prior = random_prior(3, gen)
    node_J, node_h = (t.requires_grad_(True) for t in random_nodes(2, 7, 3, gen))
    post = lds_posterior(prior, node_J, node_h)
    grad_J, grad_h = torch.autograd.grad(post.log_z.sum(), [node_J, node_h])
    torch.testing.assert_close(grad_h, post.mean.detach(), atol=1e-10, rtol=0)
    second = post.cov.diagonal(dim1=-2, dim2=-1) + post.mean ** 2
    torch.testing.assert_close(grad_J, -0.5 * second.detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("T", [2, 37, 64])
def test_parallel_equals_sequential_with_samples_and_gradients(T):
    gen = torch.Generator().manual_seed(T)
    prior = random_prior(3, gen)
    nodes = random_nodes(4, T, 3, gen)
    results = {}
    for method in ("sequential", "parallel"):
        node_J, node_h = (t.clone().requires_grad_(True) for t in nodes)
        torch.manual_seed(0)
        post = lds_posterior(prior, node_J, node_h, num_samples=5, method=method)
        objective = post.log_z.sum() + post.samples.sin().sum() + post.cov.sum() + post.cross_cov.sum()
        results[method] = (*post, *torch.autograd.grad(objective, [node_J, node_h]))
    for seq, par in zip(results["sequential"], results["parallel"]):
        torch.testing.assert_close(par, seq, atol=1e-8, rtol=1e-8)


def test_sampler_moments_match_the_dense_gaussian():
    gen = torch.Generator().manual_seed(3)
    T, n, S = 4, 2, 40000
    prior = random_prior(n, gen)
    node_J, node_h = random_nodes(2, T, n, gen)
    _, mean, cov = dense_joint(prior, node_J, node_h)
    torch.manual_seed(0)
    samples = lds_posterior(prior, node_J, node_h, num_samples=S).samples.reshape(S, 2, T * n)
    std = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((samples.mean(0) - mean).abs() < 4.5 * std / math.sqrt(S)).all()
    centred = samples - mean
    sample_cov = torch.einsum("sbi,sbj->bij", centred, centred) / S
    se = (std[:, :, None] * std[:, None, :] * math.sqrt(2.0 / S))  # bound on the std error of a covariance
    assert ((sample_cov - cov).abs() < 4.5 * se).all()


def test_samples_are_reparameterised():
    """d samples / d h_t = d mean / d h_t: the noise does not depend on h."""
    gen = torch.Generator().manual_seed(4)
    prior = random_prior(2, gen)
    node_J, node_h = random_nodes(1, 5, 2, gen)
    node_h.requires_grad_(True)
    torch.manual_seed(0)
    post = lds_posterior(prior, node_J, node_h, num_samples=3)
    (g_samples,) = torch.autograd.grad(post.samples[:, 0, 2, 1].sum(), node_h)
    (g_mean,) = torch.autograd.grad(lds_posterior(prior, node_J, node_h).mean[0, 2, 1] * 3, node_h)
    torch.testing.assert_close(g_samples, g_mean, atol=1e-10, rtol=0)


def test_extreme_node_precisions_stay_finite():
    gen = torch.Generator().manual_seed(5)
    prior = random_prior(3, gen)
    for scale in (math.exp(10.0), math.exp(-10.0)):
        node_J = torch.full((2, 20, 3), scale, dtype=DT)
        node_h = 50 * torch.randn(2, 20, 3, generator=gen, dtype=DT)
        for method in ("sequential", "parallel"):
            post = lds_posterior(prior, node_J, node_h, num_samples=2, method=method)
            assert all(torch.isfinite(t).all() for t in post)


def test_expected_potentials_become_the_exact_lds_log_density():
    """With q(theta) concentrated (nu -> infinity, V -> 0, kappa -> infinity), the expected potentials
    evaluated at a path equal log N(x_1 | mu0, Sigma0) + sum_t log N(x_t+1 | A x_t, Q)."""
    gen = torch.Generator().manual_seed(6)
    n, T, nu = 3, 5, 1e9
    A = 0.5 * torch.randn(n, n, generator=gen, dtype=DT)
    Q, Sigma0 = random_pd(n, gen), random_pd(n, gen)
    mu0 = torch.randn(n, generator=gen, dtype=DT)
    q_niw = niw.standard_to_natural(mu0, torch.tensor(1e9, dtype=DT), nu * Sigma0, torch.tensor(nu, dtype=DT))
    q_mniw = mniw.standard_to_natural(A, 1e-9 * torch.eye(n, dtype=DT), nu * Q, torch.tensor(nu, dtype=DT))
    pot = expected_lds_potentials(niw.expected_stats(q_niw), mniw.expected_stats(q_mniw))
    x = torch.randn(T, n, generator=gen, dtype=DT)
    value = (-0.5 * x[0] @ pot.init_J @ x[0] + pot.init_h @ x[0] + pot.init_const
             + sum(-0.5 * x[t] @ pot.J11 @ x[t] - x[t] @ pot.J12 @ x[t + 1] - 0.5 * x[t + 1] @ pot.J22 @ x[t + 1]
                   + pot.pair_const for t in range(T - 1)))
    exact = (td.MultivariateNormal(mu0, Sigma0).log_prob(x[0])
             + td.MultivariateNormal(x[:-1] @ A.mT, Q).log_prob(x[1:]).sum())
    torch.testing.assert_close(value, exact, atol=1e-5, rtol=1e-7)


@pytest.mark.parametrize("length", [1, 2, 3, 8, 13])
def test_associative_scan_matches_a_loop(length):
    """A non-commutative operator (matrix products), forwards and in reverse."""
    x = torch.randn(2, length, 3, 3, dtype=DT) / 2
    (forward,) = associative_scan(lambda a, b: (a[0] @ b[0],), (x,))
    (backward,) = associative_scan(lambda a, b: (a[0] @ b[0],), (x,), reverse=True)
    for t in range(length):
        prefix, suffix = torch.eye(3, dtype=DT), torch.eye(3, dtype=DT)
        for s in range(t + 1):
            prefix = prefix @ x[:, s]
        for s in range(t, length):
            suffix = suffix @ x[:, s]
        torch.testing.assert_close(forward[:, t], prefix)
        torch.testing.assert_close(backward[:, t], suffix)


def test_hand_written_adjoints_pass_gradcheck():
    """The sequential filter's and smoother's custom backward passes against finite differences."""
    gen = torch.Generator().manual_seed(7)
    prior = random_prior(2, gen)
    node_J, node_h = (t.requires_grad_(True) for t in random_nodes(2, 4, 2, gen))

    def moments(J, h):
        post = lds_posterior(prior, J, h)
        return post.log_z, post.mean, post.cov, post.cross_cov

    assert torch.autograd.gradcheck(moments, (node_J, node_h))


@pytest.mark.parametrize("num_samples", [1, 3])  # n = 2: fewer samples than n run fused with the covariances
def test_hand_written_adjoints_pass_gradcheck_with_samples(num_samples):
    """The sequential smoother's custom backward pass with the samples among the outputs (the same noise at
    every evaluation), against finite differences."""
    gen = torch.Generator().manual_seed(9)
    prior = random_prior(2, gen)
    node_J, node_h = (t.requires_grad_(True) for t in random_nodes(2, 4, 2, gen))

    def outputs(J, h):
        torch.manual_seed(0)
        post = lds_posterior(prior, J, h, num_samples=num_samples)
        return post.log_z, post.mean, post.cov, post.cross_cov, post.samples

    assert torch.autograd.gradcheck(outputs, (node_J, node_h))


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_a_failed_factorisation_is_retried_with_jitter_and_counted(method):
    """Nothing about the second coordinate before step 2 (no initial or node information, J11 singular): the
    plain factorisation of P_1 fails, the jitter retry is taken and counted (twice: the filter's, then the
    smoother's factorisation of the same matrix), and the outputs stay finite."""
    eye = torch.eye(2, dtype=DT)
    prior = LDSPotentials(torch.zeros(2, 2, dtype=DT), torch.zeros(2, dtype=DT), torch.tensor(0.0, dtype=DT),
                          torch.diag(torch.tensor([1.0, 0.0], dtype=DT)),
                          torch.diag(torch.tensor([-0.5, 0.0], dtype=DT)), eye, torch.tensor(0.0, dtype=DT))
    node_J = torch.ones(1, 4, 2, dtype=DT)
    node_J[0, 0] = 0.0
    node_h = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(10), dtype=DT)
    post = lds_posterior(prior, node_J, node_h, num_samples=2, method=method)
    assert post.retries.item() == 2
    for value in post[:5]:
        assert torch.isfinite(value).all()
    healthy = lds_posterior(prior, node_J + 1.0, node_h, method=method)
    assert healthy.retries.item() == 0
