"""Exponential families: expected statistics = grad of the log normaliser, KL properties,
converters, and agreement with torch.distributions / Monte Carlo (float64)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from model.expfam import categorical, dirichlet, gaussian, mniw, niw

BATCH_SHAPES = [(), (4,), (3, 2)]
DT = torch.float64


def random_pd(batch: tuple, n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(*batch, n, n, generator=gen, dtype=DT)
    return x @ x.mT / n + 0.5 * torch.eye(n, dtype=DT)


def random_gaussian(batch, n, gen):
    return random_pd(batch, n, gen), torch.randn(*batch, n, generator=gen, dtype=DT)


def random_niw(batch, d, gen) -> niw.NIWNatural:
    m = torch.randn(*batch, d, generator=gen, dtype=DT)
    kappa = torch.rand(batch, generator=gen, dtype=DT) + 0.3
    nu = d - 1 + 0.5 + 3 * torch.rand(batch, generator=gen, dtype=DT)
    return niw.standard_to_natural(m, kappa, random_pd(batch, d, gen), nu)


def random_mniw(batch, n, m, gen) -> mniw.MNIWNatural:
    M = torch.randn(*batch, n, m, generator=gen, dtype=DT)
    nu = n - 1 + 0.5 + 3 * torch.rand(batch, generator=gen, dtype=DT)
    return mniw.standard_to_natural(M, random_pd(batch, m, gen), random_pd(batch, n, gen), nu)


def autograd_of(log_normalizer, params):
    params = [p.clone().requires_grad_(True) for p in params]
    return torch.autograd.grad(log_normalizer(*params).sum(), params)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_gaussian_expected_stats_are_grad_of_log_normalizer(batch):
    J, h = random_gaussian(batch, 3, torch.Generator().manual_seed(0))
    grad_J, grad_h = autograd_of(gaussian.log_normalizer, (J, h))
    second, mean = gaussian.expected_stats(J, h)
    torch.testing.assert_close(grad_J, -0.5 * second, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_h, mean, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_categorical_and_dirichlet_expected_stats_are_grad_of_log_normalizer(batch):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(*batch, 5, generator=gen, dtype=DT)
    (grad,) = autograd_of(categorical.log_normalizer, (logits,))
    torch.testing.assert_close(grad, categorical.expected_stats(logits), rtol=1e-12, atol=1e-12)
    natural = dirichlet.alpha_to_natural(torch.rand(*batch, 5, generator=gen, dtype=DT) * 3 + 0.1)
    (grad,) = autograd_of(dirichlet.log_normalizer, (natural,))
    torch.testing.assert_close(grad, dirichlet.expected_stats(natural), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_niw_expected_stats_are_grad_of_log_normalizer(batch, d):
    eta = random_niw(batch, d, torch.Generator().manual_seed(2))
    grads = autograd_of(lambda *p: niw.log_normalizer(niw.NIWNatural(*p)), eta)
    e = niw.expected_stats(eta)
    for got, want in zip(grads, (-0.5 * e.J, e.h, -0.5 * e.quad, 0.5 * e.logdet)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("n,m", [(1, 1), (2, 2), (3, 2)])
def test_mniw_expected_stats_are_grad_of_log_normalizer(batch, n, m):
    eta = random_mniw(batch, n, m, torch.Generator().manual_seed(3))
    grads = autograd_of(lambda *p: mniw.log_normalizer(mniw.MNIWNatural(*p)), eta)
    e = mniw.expected_stats(eta)
    for got, want in zip(grads, (-0.5 * e.aqa, e.qa.mT, -0.5 * e.q, 0.5 * e.logdet)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_kl_is_nonnegative_and_zero_for_equal_members():
    gen = torch.Generator().manual_seed(4)
    pairs = {
        "gaussian": (random_gaussian((6,), 3, gen), random_gaussian((6,), 3, gen), lambda q, p: gaussian.kl(*q, *p)),
        "categorical": (torch.randn(6, 4, generator=gen, dtype=DT), torch.randn(6, 4, generator=gen, dtype=DT),
                        categorical.kl),
        "dirichlet": (torch.rand(6, 4, generator=gen, dtype=DT) * 3 - 0.5,
                      torch.rand(6, 4, generator=gen, dtype=DT) * 3 - 0.5, dirichlet.kl),
        "niw": (random_niw((6,), 2, gen), random_niw((6,), 2, gen), niw.kl),
        "mniw": (random_mniw((6,), 3, 2, gen), random_mniw((6,), 3, 2, gen), mniw.kl),
    }
    for name, (q, p, kl) in pairs.items():
        assert (kl(q, p) > 0).all(), name
        torch.testing.assert_close(kl(q, q), torch.zeros(6, dtype=DT), atol=1e-10, rtol=0, msg=name)


def test_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(5)
    (Jq, hq), (Jp, hp) = random_gaussian((4,), 3, gen), random_gaussian((4,), 3, gen)
    mq, cq = gaussian.natural_to_mean_cov(Jq, hq)
    mp, cp = gaussian.natural_to_mean_cov(Jp, hp)
    want = td.kl_divergence(td.MultivariateNormal(mq, cq), td.MultivariateNormal(mp, cp))
    torch.testing.assert_close(gaussian.kl(Jq, hq, Jp, hp), want, rtol=1e-10, atol=1e-10)
    aq, ap = torch.rand(4, 5, generator=gen, dtype=DT) + 0.2, torch.rand(4, 5, generator=gen, dtype=DT) + 0.2
    torch.testing.assert_close(dirichlet.kl(aq - 1, ap - 1), td.kl_divergence(td.Dirichlet(aq), td.Dirichlet(ap)))
    lq, lp = torch.randn(4, 5, generator=gen, dtype=DT), torch.randn(4, 5, generator=gen, dtype=DT)
    torch.testing.assert_close(categorical.kl(lq, lp),
                               td.kl_divergence(td.Categorical(logits=lq), td.Categorical(logits=lp)))


def test_converters_round_trip():
    gen = torch.Generator().manual_seed(6)
    J, h = random_gaussian((3,), 4, gen)
    torch.testing.assert_close(gaussian.mean_cov_to_natural(*gaussian.natural_to_mean_cov(J, h)), (J, h))
    eta = random_niw((3,), 2, gen)
    for got, want in zip(niw.standard_to_natural(*niw.natural_to_standard(eta)), eta):
        torch.testing.assert_close(got, want)
    eta = random_mniw((3,), 3, 2, gen)
    for got, want in zip(mniw.standard_to_natural(*mniw.natural_to_standard(eta)), eta):
        torch.testing.assert_close(got, want)
    alpha = torch.rand(5, generator=gen, dtype=DT) + 0.1
    torch.testing.assert_close(dirichlet.natural_to_alpha(dirichlet.alpha_to_natural(alpha)), alpha)


def sample_niw(eta: niw.NIWNatural, num: int) -> tuple[torch.Tensor, torch.Tensor, td.Distribution]:
    """(mu, Lambda = Sigma^-1) samples and the Wishart they came from (torch.distributions)."""
    m, kappa, Psi, nu = niw.natural_to_standard(eta)
    wishart = td.Wishart(df=nu, covariance_matrix=torch.linalg.inv(Psi))
    precision = wishart.sample((num,))
    mu = td.MultivariateNormal(m, precision_matrix=kappa * precision).sample()
    return mu, precision, wishart


@pytest.mark.filterwarnings("ignore:Low df values", "ignore:Singular sample detected")
def test_niw_expectations_and_kl_match_monte_carlo():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    q, p = random_niw((), 2, gen), random_niw((), 2, gen)
    num = 200_000
    mu, precision, wishart_q = sample_niw(q, num)
    e = niw.expected_stats(q)
    mc = [precision.mean(0), (precision @ mu.unsqueeze(-1)).squeeze(-1).mean(0),
          (mu.unsqueeze(-2) @ precision @ mu.unsqueeze(-1)).squeeze().mean(), torch.logdet(precision).mean()]
    for got, want in zip(mc, e):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)

    def log_density(eta, mu, precision, wishart):
        m, kappa, _, _ = niw.natural_to_standard(eta)
        return wishart.log_prob(precision) + td.MultivariateNormal(m, precision_matrix=kappa * precision).log_prob(mu)

    m_p, _, S_p, nu_p = niw.natural_to_standard(p)
    wishart_p = td.Wishart(df=nu_p, covariance_matrix=torch.linalg.inv(S_p))
    diffs = log_density(q, mu, precision, wishart_q) - log_density(p, mu, precision, wishart_p)
    stderr = diffs.std() / num ** 0.5
    assert abs(diffs.mean() - niw.kl(q, p)) < 4 * stderr


@pytest.mark.filterwarnings("ignore:Singular sample detected")
def test_mniw_expectations_match_monte_carlo():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(8)
    eta = random_mniw((), 3, 2, gen)
    M, V, Psi, nu = mniw.natural_to_standard(eta)
    num = 200_000
    precision = td.Wishart(df=nu, covariance_matrix=torch.linalg.inv(Psi)).sample((num,))  # Q^-1
    chol_q = torch.linalg.cholesky(torch.linalg.inv(precision))
    A = M + chol_q @ torch.randn(num, 3, 2, dtype=DT) @ torch.linalg.cholesky(V).mT
    e = mniw.expected_stats(eta)
    mc = [(A.mT @ precision @ A).mean(0), (precision @ A).mean(0), precision.mean(0), torch.logdet(precision).mean()]
    for got, want in zip(mc, e):
        torch.testing.assert_close(got, want, rtol=0.03, atol=0.03)


def test_gaussian_samples_have_the_right_moments():
    torch.manual_seed(0)
    J, h = random_gaussian((2,), 3, torch.Generator().manual_seed(9))
    mean, cov = gaussian.natural_to_mean_cov(J, h)
    x = gaussian.InfoGaussian.from_natural(J, h).sample(100_000)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    centred = x - mean
    torch.testing.assert_close((centred.unsqueeze(-1) * centred.unsqueeze(-2)).mean(0), cov, atol=0.03, rtol=0)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_info_gaussian_matches_a_dense_gaussian_and_torch_distributions(batch):
    """The one log-normaliser: A(J, h) = 1/2 mu^T J mu - 1/2 log|J| + n/2 log 2 pi with a dense inverse and
    log-determinant; log_prob, moments and expected statistics against torch.distributions."""
    gen = torch.Generator().manual_seed(20)
    J, h = random_gaussian(batch, 3, gen)
    q = gaussian.InfoGaussian.from_natural(J, h)
    mean = (torch.linalg.inv(J) @ h.unsqueeze(-1)).squeeze(-1)
    dense = 0.5 * (mean * h).sum(-1) - 0.5 * torch.logdet(J) + 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(q.log_normalizer(), dense)
    reference = td.MultivariateNormal(mean, precision_matrix=J)
    x = torch.randn(5, *batch, 3, generator=gen, dtype=DT)
    torch.testing.assert_close(q.log_prob(x), reference.log_prob(x))
    got_mean, got_cov = q.moments()
    torch.testing.assert_close(got_mean, reference.mean)
    torch.testing.assert_close(got_cov, reference.covariance_matrix)
    second, first = q.expected_stats()
    torch.testing.assert_close(second, reference.covariance_matrix + mean.unsqueeze(-1) * mean.unsqueeze(-2))
    torch.testing.assert_close(first, mean)
    assert not q.retried.any()


def test_point_stats_are_the_statistics_at_the_point_estimate():
    """NIW: t(mu, Sigma) at mu = m, Sigma^-1 = nu Psi^-1; MNIW: t(A, Q) at A = M, Q^-1 = nu Psi^-1; Dirichlet:
    log E[pi]. Computed here with dense inverses from the standard parameters."""
    gen = torch.Generator().manual_seed(21)
    m, _, Psi, nu = niw.natural_to_standard(random_niw((4,), 3, gen))
    point = niw.point_stats(niw.standard_to_natural(m, torch.ones(4, dtype=DT), Psi, nu))
    precision = nu[:, None, None] * torch.linalg.inv(Psi)
    h = (precision @ m.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(point, niw.NIWExpectations(precision, h, (m * h).sum(-1), torch.logdet(precision)))

    M, V, Psi, nu = mniw.natural_to_standard(random_mniw((2,), 3, 3, gen))
    point = mniw.point_stats(mniw.standard_to_natural(M, V, Psi, nu))
    q = nu[:, None, None] * torch.linalg.inv(Psi)
    torch.testing.assert_close(point, mniw.MNIWExpectations(M.mT @ q @ M, q @ M, q, torch.logdet(q)))

    alpha = torch.rand(5, generator=gen, dtype=DT) + 0.5
    torch.testing.assert_close(dirichlet.point_stats(dirichlet.alpha_to_natural(alpha)), (alpha / alpha.sum()).log())


# ---------------------------------------------------------------- the algebra of Gaussian potentials
def joint_potential(n_a: int, n_b: int, gen: torch.Generator):
    """A random joint potential over (x_a, x_b) (batch 3): J (3, n, n), h (3, n), n = n_a + n_b."""
    J, h = random_gaussian((3,), n_a + n_b, gen)
    return J, h


def potential_at(J: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-1/2 x^T J x + h^T x, batched."""
    return -0.5 * (x.unsqueeze(-2) @ J @ x.unsqueeze(-1))[..., 0, 0] + (h * x).sum(-1)


def test_added_and_mixed_potentials_are_the_sum_and_the_expectation_of_the_log_potentials():
    gen = torch.Generator().manual_seed(0)
    (J1, h1), (J2, h2) = random_gaussian((3,), 4, gen), random_gaussian((3,), 4, gen)
    x = torch.randn(3, 4, generator=gen, dtype=DT)
    J, h = gaussian.add_potentials((J1, h1), (J2, h2))
    torch.testing.assert_close(potential_at(J, h, x), potential_at(J1, h1, x) + potential_at(J2, h2, x))
    Js, hs = random_gaussian((5,), 4, gen)  # K = 5 potentials, weights q(z) per example
    q = torch.softmax(torch.randn(3, 5, generator=gen, dtype=DT), -1)
    expected = sum(q[:, k] * potential_at(Js[k], hs[k], x) for k in range(5))
    torch.testing.assert_close(potential_at(gaussian.mix_potentials(q, Js), gaussian.mix_potentials(q, hs), x),
                               expected)


def test_condition_gives_the_dense_gaussian_conditional():
    gen = torch.Generator().manual_seed(1)
    J, h = joint_potential(2, 3, gen)
    cov = torch.linalg.inv(J)
    mean = (cov @ h.unsqueeze(-1)).squeeze(-1)
    x_b = torch.randn(3, 3, generator=gen, dtype=DT)
    gain = cov[:, :2, 2:] @ torch.linalg.inv(cov[:, 2:, 2:])  # mean_a|b = mu_a + S_ab S_bb^-1 (x_b - mu_b)
    want_mean = mean[:, :2] + (gain @ (x_b - mean[:, 2:]).unsqueeze(-1)).squeeze(-1)
    want_cov = cov[:, :2, :2] - gain @ cov[:, 2:, :2]
    conditional = gaussian.InfoGaussian.from_natural(J[:, :2, :2], gaussian.condition(J[:, :2, 2:], h[:, :2], x_b))
    got_mean, got_cov = conditional.moments()
    torch.testing.assert_close(got_mean, want_mean)
    torch.testing.assert_close(got_cov, want_cov)


def test_marginalise_gives_the_dense_marginal_and_keeps_the_normaliser():
    gen = torch.Generator().manual_seed(2)
    J, h = joint_potential(2, 3, gen)
    cov = torch.linalg.inv(J)
    mean = (cov @ h.unsqueeze(-1)).squeeze(-1)
    J_a, h_a, const, retried = gaussian.marginalise(J[:, :2, :2], J[:, :2, 2:], J[:, 2:, 2:], h[:, :2], h[:, 2:])
    got_mean, got_cov = gaussian.InfoGaussian.from_natural(J_a, h_a).moments()
    torch.testing.assert_close(got_cov, cov[:, :2, :2])  # the marginal of a Gaussian: its block of the covariance
    torch.testing.assert_close(got_mean, mean[:, :2])
    # int int exp(psi) dx_b dx_a = exp(A(J, h)): the part integrated out carries A(J_bb, h_b)
    torch.testing.assert_close(gaussian.log_normalizer(J_a, h_a) + const, gaussian.log_normalizer(J, h))
    assert not retried.any()


def test_expected_log_potential_matches_the_moments_formula():
    """E[-1/2 x^T J x + h^T x] = -1/2 tr(J Sigma) - 1/2 mu^T J mu + h^T mu, for every pair (example, potential)."""
    gen = torch.Generator().manual_seed(3)
    Js, hs = random_gaussian((5,), 3, gen)
    cov, mean = random_pd((4,), 3, gen), torch.randn(4, 3, generator=gen, dtype=DT)
    second = cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
    want = torch.stack([-0.5 * (Js[k] * cov).sum((-2, -1)) + potential_at(Js[k], hs[k], mean) for k in range(5)], -1)
    torch.testing.assert_close(gaussian.expected_log_potential(Js, second, hs, mean), want)
    torch.testing.assert_close(gaussian.expected_log_potential(Js, second),
                               want - mean @ hs.mT)  # without the linear term
