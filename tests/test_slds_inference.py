"""Switching LDS inference against brute force (float64): the HMM forward-backward against enumerating every
discrete path, the Kalman code with per-step pair potentials against a dense (T n)-dimensional Gaussian, the
structured mean-field sweep's KL, fixed point and evidence bound against enumeration over z with dense
Gaussian integrals over x, the SVI step against the closed-form conjugate update, and the marginal densities
of x (SVAE.md section 6)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import distributions as td

from model.svae.hmm import hmm_log_normalizer, hmm_posterior
from model.svae.kalman import LDSPotentials, lds_posterior
from model.svae.slds import SwitchingLinearDynamicalSystem
from model.svae.slds_inference import SwitchingPotentials, switching_meanfield, switching_sweep
from tests.references import dense_chain, embed_pair
from tests.test_kalman import random_pd, random_prior

DT = torch.float64
TOL = dict(atol=1e-8, rtol=1e-8)


# ---------------------------------------------------------------- random potentials
def random_nodes(B: int, T: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Node potentials with node_J > 0."""
    return (0.2 + 2 * torch.rand(B, T, n, generator=gen, dtype=DT),
            torch.randn(B, T, n, generator=gen, dtype=DT))


def random_pair_blocks(shape: tuple[int, ...], n: int, gen: torch.Generator):
    """J11, J12, J22 (*shape, n, n), each [[J11, J12], [J12^T, J22]] positive definite."""
    pairs = torch.stack([random_pd(2 * n, gen) for _ in range(math.prod(shape))]).reshape(*shape, 2 * n, 2 * n)
    return pairs[..., :n, :n], pairs[..., :n, n:], pairs[..., n:, n:]


def random_switching(K: int, n: int, gen: torch.Generator) -> SwitchingPotentials:
    """Unnormalised log-potentials: random log_init, log_trans (rows not normalised), init and PD state pairs."""
    J11, J12, J22 = random_pair_blocks((K,), n, gen)
    states = LDSPotentials(random_pd(n, gen), torch.randn(n, generator=gen, dtype=DT),
                           torch.randn((), generator=gen, dtype=DT), J11, J12, J22,
                           torch.randn(K, generator=gen, dtype=DT))
    return SwitchingPotentials(torch.randn(K, generator=gen, dtype=DT), torch.randn(K, K, generator=gen, dtype=DT),
                               states)


def random_weights(B: int, T: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """Arbitrary rows on the simplex (B, T-1, K)."""
    return torch.softmax(2 * torch.randn(B, T - 1, K, generator=gen, dtype=DT), -1)


# ---------------------------------------------------------------- brute force
def paths(K: int, T: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(K), repeat=T))


def path_log_prior(log_init: torch.Tensor, log_trans: torch.Tensor, z: tuple[int, ...]) -> torch.Tensor:
    """log_init[z_1] + sum_{t<T} log_trans[z_t, z_t+1]."""
    return log_init[z[0]] + sum((log_trans[z[t], z[t + 1]] for t in range(len(z) - 1)), log_init.new_zeros(()))


def enumerate_chain(log_init, log_trans, node):
    """Normalised q(z) of the chain with node log-potentials node (B, T, K), by enumeration:
    (log Z (B,), marginals (B, T, K), pair marginals (B, T-1, K, K), E_q[log q(z)] (B,))."""
    B, T, K = node.shape
    all_paths = paths(K, T)
    scores = torch.stack([path_log_prior(log_init, log_trans, z)
                          + sum(node[:, t, z[t]] for t in range(T)) for z in all_paths], -1)  # (B, P)
    log_z = torch.logsumexp(scores, -1)
    prob = (scores - log_z[:, None]).exp()
    marginals = node.new_zeros(B, T, K)
    pairs = node.new_zeros(B, T - 1, K, K)
    for p, z in enumerate(all_paths):
        for t in range(T):
            marginals[:, t, z[t]] += prob[:, p]
        for t in range(T - 1):
            pairs[:, t, z[t], z[t + 1]] += prob[:, p]
    neg_entropy = (prob * (scores - log_z[:, None])).sum(-1)
    return log_z, marginals, pairs, neg_entropy


def mixed_pairs(potentials: SwitchingPotentials, weights: torch.Tensor):
    """Per-step pair potentials sum_k w[b, t, k] pair_k: J11, J12, J22 (B, T-1, n, n), const (B, T-1)."""
    s = potentials.states
    mix = lambda m: torch.einsum("btk,kij->btij", weights, m)  # noqa: E731
    return mix(s.J11), mix(s.J12), mix(s.J22), torch.einsum("btk,k->bt", weights, s.pair_const)


def dense_q_x(potentials: SwitchingPotentials, weights, node_J, node_h):
    """q(x) of the chain whose pair potential at step t is sum_k weights[:, t, k] pair_k, plus psi."""
    s = potentials.states
    return dense_chain(s.init_J, s.init_h, s.init_const, *mixed_pairs(potentials, weights), node_J, node_h)


def blocks(mean: torch.Tensor, cov: torch.Tensor, T: int, n: int):
    """Dense moments as (B, T, n), (B, T, n, n), Cov(x_t, x_t+1) (B, T-1, n, n)."""
    B = mean.shape[0]
    c = cov.reshape(B, T, n, T, n)
    return (mean.reshape(B, T, n), torch.stack([c[:, t, :, t] for t in range(T)], 1),
            torch.stack([c[:, t, :, t + 1] for t in range(T - 1)], 1))


def expected_pairs(potentials: SwitchingPotentials, mean, cov, T: int, n: int) -> torch.Tensor:
    """l_t(k) = E_q(x)[pair_k(x_t, x_t+1)] = -1/2 tr(P_tk E[x x^T]) + c_k, dense: (B, T-1, K)."""
    s = potentials.states
    second = cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
    K = s.J11.shape[0]
    return torch.stack([torch.stack([
        -0.5 * (embed_pair(s.J11[k], s.J12[k], s.J22[k], t, T, n) * second).sum((-2, -1)) + s.pair_const[k]
        for k in range(K)], -1) for t in range(T - 1)], 1)


def expected_init(potentials: SwitchingPotentials, mean, cov, n: int) -> torch.Tensor:
    """E_q(x)[init(x_1)]: (B,)."""
    s = potentials.states
    m1, S1 = mean[:, :n], cov[:, :n, :n] + mean[:, :n].unsqueeze(-1) * mean[:, :n].unsqueeze(-2)
    return -0.5 * (s.init_J * S1).sum((-2, -1)) + m1 @ s.init_h + s.init_const


def expected_psi(node_J, node_h, mean, cov) -> torch.Tensor:
    """sum_t E_q(x)[psi_t(x_t)]: (B,)."""
    B = mean.shape[0]
    var = cov.diagonal(dim1=-2, dim2=-1)
    J, h = node_J.reshape(B, -1), node_h.reshape(B, -1)
    return (-0.5 * J * (var + mean ** 2) + h * mean).sum(-1)


def one_hot_weights(z: tuple[int, ...], B: int, K: int) -> torch.Tensor:
    """The weights (B, T-1, K) that select pair_{z_t} at step t."""
    return torch.nn.functional.one_hot(torch.tensor(z[:-1]), K).to(DT).expand(B, -1, -1)


def exact_log_evidence(potentials: SwitchingPotentials, node_J, node_h) -> torch.Tensor:
    """log sum_z int exp(joint log-potential(z, x) + psi(x)) dx: (B,)."""
    B, T, _ = node_h.shape
    K = potentials.log_init.shape[0]
    terms = [path_log_prior(potentials.log_init, potentials.log_trans, z)
             + dense_q_x(potentials, one_hot_weights(z, B, K), node_J, node_h)[0] for z in paths(K, T)]
    return torch.logsumexp(torch.stack(terms, -1), -1)


def pair_value(J11, J12, J22, c, x, y) -> torch.Tensor:
    """-1/2 x^T J11 x - x^T J12 y - 1/2 y^T J22 y + c for x, y (..., n)."""
    quad = lambda u, M, v: torch.einsum("...i,ij,...j->...", u, M, v)  # noqa: E731
    return -0.5 * quad(x, J11, x) - quad(x, J12, y) - 0.5 * quad(y, J22, y) + c


def joint_log_potential(potentials: SwitchingPotentials, z: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """log_init[z_1] + sum log_trans + init(x_1) + sum_{t<T} pair_{z_t}(x_t, x_t+1) at paths x (..., T, n)."""
    s = potentials.states
    x1 = x[..., 0, :]
    value = (path_log_prior(potentials.log_init, potentials.log_trans, z)
             - 0.5 * torch.einsum("...i,ij,...j->...", x1, s.init_J, x1) + x1 @ s.init_h + s.init_const)
    for t in range(x.shape[-2] - 1):
        k = z[t]
        value = value + pair_value(s.J11[k], s.J12[k], s.J22[k], s.pair_const[k], x[..., t, :], x[..., t + 1, :])
    return value


# ---------------------------------------------------------------- 1. HMM
@pytest.mark.parametrize("K,T,scale", [(2, 3, 1.0), (3, 4, 1.0), (2, 1, 1.0), (3, 4, 50.0)])
def test_hmm_posterior_matches_enumeration(K, T, scale):
    """log Z, marginals and pair marginals of the unnormalised chain equal enumeration over all K^T paths."""
    gen = torch.Generator().manual_seed(100 * K + T)
    B, S = 3, 2
    log_init = torch.randn(K, generator=gen, dtype=DT)
    log_trans = torch.randn(K, K, generator=gen, dtype=DT)  # rows not normalised
    node = scale * torch.randn(S, B, T, K, generator=gen, dtype=DT)
    post = hmm_posterior(log_init, log_trans, node[0])
    log_z, marginals, pairs, _ = enumerate_chain(log_init, log_trans, node[0])
    torch.testing.assert_close(post.log_z, log_z, **TOL)
    torch.testing.assert_close(post.marginals, marginals, **TOL)
    assert post.pair_marginals.shape == (B, T - 1, K, K)
    torch.testing.assert_close(post.pair_marginals, pairs, **TOL)
    torch.testing.assert_close(hmm_log_normalizer(log_init, log_trans, node[0]), log_z, **TOL)
    # an extra leading batch dim (S, B, T, K)
    expected = torch.stack([enumerate_chain(log_init, log_trans, node[s])[0] for s in range(S)])
    torch.testing.assert_close(hmm_log_normalizer(log_init, log_trans, node), expected, **TOL)
    torch.testing.assert_close(hmm_posterior(log_init, log_trans, node).log_z, expected, **TOL)


# ---------------------------------------------------------------- 2. Kalman with per-step pair potentials
def random_per_step(B: int, T: int, n: int, gen: torch.Generator) -> LDSPotentials:
    J11, J12, J22 = random_pair_blocks((B, T - 1), n, gen)
    return LDSPotentials(random_pd(n, gen), torch.randn(n, generator=gen, dtype=DT),
                         torch.randn((), generator=gen, dtype=DT), J11, J12, J22,
                         torch.randn(B, T - 1, generator=gen, dtype=DT))


@pytest.mark.parametrize("method", ["sequential", "parallel"])
@pytest.mark.parametrize("T,n", [(2, 1), (4, 2), (5, 1), (6, 2)])
def test_lds_posterior_per_step_matches_dense_gaussian(method, T, n):
    """Per-step (time-varying) pair potentials: log Z, means, covariances and Cov(x_t, x_t+1) equal the dense
    Gaussian's."""
    gen = torch.Generator().manual_seed(10 * T + n)
    B = 3
    prior = random_per_step(B, T, n, gen)
    node_J, node_h = random_nodes(B, T, n, gen)
    log_z, mean, cov = dense_chain(*prior, node_J, node_h)
    post = lds_posterior(prior, node_J, node_h, method=method)
    m, c, cc = blocks(mean, cov, T, n)
    torch.testing.assert_close(post.log_z, log_z, **TOL)
    torch.testing.assert_close(post.mean, m, **TOL)
    torch.testing.assert_close(post.cov, c, **TOL)
    assert post.cross_cov.shape == (B, T - 1, n, n)
    torch.testing.assert_close(post.cross_cov, cc, **TOL)


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_lds_posterior_shared_expanded_to_per_step_is_unchanged(method):
    """Shared pair potentials expanded to (B, T-1, n, n), (B, T-1) give the shared path's outputs (samples too)."""
    gen = torch.Generator().manual_seed(7)
    B, T, n = 3, 6, 2
    shared = random_prior(n, gen)
    per_step = shared._replace(J11=shared.J11.expand(B, T - 1, n, n), J12=shared.J12.expand(B, T - 1, n, n),
                               J22=shared.J22.expand(B, T - 1, n, n),
                               pair_const=shared.pair_const.expand(B, T - 1))
    node_J, node_h = random_nodes(B, T, n, gen)
    torch.manual_seed(0)
    a = lds_posterior(shared, node_J, node_h, num_samples=3, method=method)
    torch.manual_seed(0)
    b = lds_posterior(per_step, node_J, node_h, num_samples=3, method=method)
    for name in ("log_z", "mean", "cov", "cross_cov", "samples"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-10, rtol=1e-10, msg=name)


def test_lds_posterior_per_step_gradients_sequential_parallel_and_dense_agree():
    """Node-potential gradients of a scalar of the outputs (per-step potentials fixed) agree between the
    sequential filter's hand-written adjoint, the parallel scans and autograd through the dense Gaussian."""
    gen = torch.Generator().manual_seed(8)
    B, T, n = 2, 5, 2
    prior = random_per_step(B, T, n, gen)
    nodes = random_nodes(B, T, n, gen)

    def objective(log_z, mean, cov, cross_cov):
        return log_z.sum() + mean.sin().sum() + (cov ** 2).sum() + (cross_cov * cross_cov.mT.cos()).sum()

    grads = {}
    for method in ("sequential", "parallel", "dense"):
        node_J, node_h = (t.clone().requires_grad_(True) for t in nodes)
        if method == "dense":
            log_z, mean, cov = dense_chain(*prior, node_J, node_h)
            value = objective(log_z, *blocks(mean, cov, T, n))
        else:
            post = lds_posterior(prior, node_J, node_h, method=method)
            value = objective(post.log_z, post.mean, post.cov, post.cross_cov)
        grads[method] = torch.autograd.grad(value, [node_J, node_h])
    for method in ("parallel", "dense"):
        for g, g_seq in zip(grads[method], grads["sequential"]):
            torch.testing.assert_close(g, g_seq, **TOL)


# ---------------------------------------------------------------- 3. one sweep: the KL for any weights
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("method", ["sequential", "parallel"])
@pytest.mark.parametrize("K,T,n", [(2, 3, 1), (3, 4, 2), (2, 4, 2)])
def test_switching_sweep_kl_is_the_brute_force_kl_for_arbitrary_weights(K, T, n, method, temperature):
    """kl = E_q[log q(z)] + E_q[log q(x)] - E_q[log p(z, x)] by enumeration and a dense q(x), for weights that
    are not a fixed point; q(x) and q(z) match their brute-force definitions, q(z) tempered (every discrete
    log-potential over the temperature) and its entropy the enumerated one."""
    gen = torch.Generator().manual_seed(1000 * K + 10 * T + n)
    B = 3
    pot = random_switching(K, n, gen)
    node_J, node_h = random_nodes(B, T, n, gen)
    weights = random_weights(B, T, K, gen)
    post = switching_sweep(pot, node_J, node_h, weights, method=method, temperature=torch.tensor(temperature, dtype=DT))

    # q(x): the chain with the weighted pairs plus psi
    _, mean, cov = dense_q_x(pot, weights, node_J, node_h)
    m, c, cc = blocks(mean, cov, T, n)
    torch.testing.assert_close(post.x.smoothed.mean, m, **TOL)
    torch.testing.assert_close(post.x.smoothed.cov, c, **TOL)
    torch.testing.assert_close(post.x.smoothed.cross_cov, cc, **TOL)

    # q(z) proportional to exp((log p(z) + sum_{t<T} l_t(z_t)) / temperature), enumerated
    pair = expected_pairs(pot, mean, cov, T, n)  # (B, T-1, K)
    node = torch.cat([pair, pair.new_zeros(B, 1, K)], 1)
    _, marginals, pair_marginals, e_log_qz = enumerate_chain(pot.log_init / temperature, pot.log_trans / temperature,
                                                             node / temperature)
    torch.testing.assert_close(post.states.marginals, marginals, **TOL)
    torch.testing.assert_close(post.states.pair_marginals, pair_marginals, **TOL)
    torch.testing.assert_close(post.z_entropy, -e_log_qz, **TOL)
    if temperature == 1.0:  # untempered (no annealing): the same q and KL, without the entropy
        plain = switching_sweep(pot, node_J, node_h, weights, method=method)
        assert plain.z_entropy is None and torch.equal(plain.kl, post.kl)
        assert torch.equal(plain.states.marginals, post.states.marginals)

    # E_q[log q(x)] = minus the entropy of the dense Gaussian
    e_log_qx = -0.5 * T * n * (1 + math.log(2 * math.pi)) - 0.5 * torch.logdet(cov)
    # E_{q(z) q(x)}[log p(z, x)] = sum_z q(z) (log p(z) + E init + sum_t l_t(z_t))
    e_log_pz = sum(marginals[:, 0, k] * pot.log_init[k] for k in range(K)) + sum(
        pair_marginals[:, t, j, k] * pot.log_trans[j, k] for t in range(T - 1) for j in range(K) for k in range(K))
    e_log_px_given_z = expected_init(pot, mean, cov, n) + (marginals[:, :-1] * pair).sum((-2, -1))
    kl = e_log_qz + e_log_qx - e_log_pz - e_log_px_given_z
    torch.testing.assert_close(post.kl, kl, **TOL)


# ---------------------------------------------------------------- 4. structured mean field
@pytest.mark.parametrize("K,T,n", [(2, 4, 2), (3, 3, 1), (1, 4, 2)])
def test_switching_meanfield_fixed_point_and_evidence_bound(K, T, n):
    """At the converged sweeps q(z) is optimal given q(x), q(x) optimal given q(z), E_q[psi] - KL is a lower
    bound on the exact log evidence, and with K = 1 the bound is tight."""
    gen = torch.Generator().manual_seed(2000 * K + 10 * T + n)
    B = 3
    pot = random_switching(K, n, gen)
    node_J, node_h = random_nodes(B, T, n, gen)
    post = switching_meanfield(pot, node_J, node_h, 0, max_iter=500, tol=1e-12)
    assert post.iterations < 500

    # (a) q(z) = q*(z) proportional to exp(log p(z) + E_q(x) log p(x | z)), with q(x) the returned chain
    chain_mean = post.x.smoothed.mean.reshape(B, T * n)
    chain_cov = torch.zeros(B, T * n, T * n, dtype=DT)  # only the diagonal and first off-diagonal blocks enter
    for t in range(T):
        chain_cov[:, t * n:(t + 1) * n, t * n:(t + 1) * n] = post.x.smoothed.cov[:, t]
    for t in range(T - 1):
        chain_cov[:, t * n:(t + 1) * n, (t + 1) * n:(t + 2) * n] = post.x.smoothed.cross_cov[:, t]
        chain_cov[:, (t + 1) * n:(t + 2) * n, t * n:(t + 1) * n] = post.x.smoothed.cross_cov[:, t].mT
    pair = expected_pairs(pot, chain_mean, chain_cov, T, n)
    node = torch.cat([pair, pair.new_zeros(B, 1, K)], 1)
    _, marginals, pair_marginals, _ = enumerate_chain(pot.log_init, pot.log_trans, node)
    torch.testing.assert_close(post.states.marginals, marginals, **TOL)
    torch.testing.assert_close(post.states.pair_marginals, pair_marginals, **TOL)

    # (b) q(x) = the Gaussian with E_q(z)[joint x potential] + psi, q(z) the returned marginals
    _, mean, cov = dense_q_x(pot, post.states.marginals[:, :-1], node_J, node_h)
    m, c, cc = blocks(mean, cov, T, n)
    fixed = dict(atol=1e-9, rtol=1e-9)  # converged to a change of 1e-12 nats in the objective
    torch.testing.assert_close(post.x.smoothed.mean, m, **fixed)
    torch.testing.assert_close(post.x.smoothed.cov, c, **fixed)
    torch.testing.assert_close(post.x.smoothed.cross_cov, cc, **fixed)

    # (c) the evidence lower bound
    elbo = expected_psi(node_J, node_h, post.x.smoothed.mean.reshape(B, -1), chain_cov) - post.kl
    evidence = exact_log_evidence(pot, node_J, node_h)
    assert (elbo <= evidence + 1e-10).all(), (elbo, evidence)
    if K == 1:
        torch.testing.assert_close(elbo, evidence, atol=1e-8, rtol=0)
    else:
        assert (elbo < evidence - 1e-6).any(), (elbo, evidence)  # mean field is not exact here


# ---------------------------------------------------------------- 5. SVI step
@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_natural_gradient_step_is_the_conjugate_update(rho):
    """q <- (1 - rho) q + rho (prior + N / B * t_hat), t_hat the expected statistics computed by explicit loops."""
    torch.manual_seed(3)  # the initial dynamics means of q(theta)
    gen = torch.Generator().manual_seed(9)
    K, n, B, T, N = 3, 2, 4, 5, 37
    pgm = SwitchingLinearDynamicalSystem(num_states=K, latent_dim=n)
    node_J, node_h = random_nodes(B, T, n, gen)
    post = pgm.infer(pgm.potentials(pgm.global_stats()), node_J, node_h, 0)
    stats = pgm.statistics(post)
    old = {name: pgm.natural(name) for name in ("initial_state", "transitions", "niw", "mniw")}
    old = {name: (v.clone() if torch.is_tensor(v) else type(v)(*(f.clone() for f in v))) for name, v in old.items()}

    mean, cov, cross = post.x.smoothed.mean.detach(), post.x.smoothed.cov.detach(), post.x.smoothed.cross_cov.detach()
    q, pairs = post.states.marginals.detach(), post.states.pair_marginals.detach()
    outer = lambda a, b: a.unsqueeze(-1) * b.unsqueeze(-2)  # noqa: E731
    init_state = torch.zeros(K, dtype=DT)
    trans = torch.zeros(K, K, dtype=DT)
    niw_phi, niw_b = torch.zeros(n, n, dtype=DT), torch.zeros(n, dtype=DT)
    v_inv, v_inv_mt, phi, nu = (torch.zeros(K, n, n, dtype=DT), torch.zeros(K, n, n, dtype=DT),
                                torch.zeros(K, n, n, dtype=DT), torch.zeros(K, dtype=DT))
    for b in range(B):
        init_state += q[b, 0]
        niw_phi += cov[b, 0] + outer(mean[b, 0], mean[b, 0])
        niw_b += mean[b, 0]
        for t in range(T - 1):
            trans += pairs[b, t]
            S_t = cov[b, t] + outer(mean[b, t], mean[b, t])
            S_next = cov[b, t + 1] + outer(mean[b, t + 1], mean[b, t + 1])
            X_t = cross[b, t] + outer(mean[b, t], mean[b, t + 1])
            for k in range(K):
                v_inv[k] += q[b, t, k] * S_t
                v_inv_mt[k] += q[b, t, k] * X_t
                phi[k] += q[b, t, k] * S_next
                nu[k] += q[b, t, k]
    count = torch.tensor(float(B), dtype=DT)
    t_hat = {"initial_state": (init_state,), "transitions": (trans,), "niw": (niw_phi, niw_b, count, count),
             "mniw": (v_inv, v_inv_mt, phi, nu)}

    pgm.natural_gradient_step(stats, num_train=N, rho=rho)
    for name, fields in t_hat.items():
        new, prior, previous = pgm.natural(name), pgm.natural(name, prior=True), old[name]
        unpack = lambda v: (v,) if torch.is_tensor(v) else tuple(v)  # noqa: E731
        for i, (new_f, prior_f, old_f, t_f) in enumerate(zip(unpack(new), unpack(prior), unpack(previous), fields)):
            expected = (1 - rho) * old_f + rho * (prior_f + (N / B) * t_f)
            torch.testing.assert_close(new_f, expected, atol=1e-10, rtol=1e-10, msg=f"{name}[{i}]")


# ---------------------------------------------------------------- 6. marginal densities of x
@pytest.mark.parametrize("K,T,n", [(2, 3, 1), (3, 4, 2)])
def test_prior_and_posterior_log_prob_of_paths(K, T, n):
    """prior_log_prob = log sum_z exp(joint log-potential(z, x)); posterior_log_prob = the dense log q(x)."""
    gen = torch.Generator().manual_seed(3000 * K + 10 * T + n)
    S, B = 2, 3
    pot = random_switching(K, n, gen)
    node_J, node_h = random_nodes(B, T, n, gen)
    x = torch.randn(S, B, T, n, generator=gen, dtype=DT)
    pgm = SwitchingLinearDynamicalSystem(num_states=K, latent_dim=n)

    expected = torch.logsumexp(torch.stack([joint_log_potential(pot, z, x) for z in paths(K, T)], -1), -1)
    torch.testing.assert_close(pgm.prior_log_prob(pot, x), expected, **TOL)

    weights = random_weights(B, T, K, gen)
    post = switching_sweep(pot, node_J, node_h, weights)
    _, mean, cov = dense_q_x(pot, weights, node_J, node_h)
    dense = td.MultivariateNormal(mean, cov).log_prob(x.reshape(S, B, T * n))
    torch.testing.assert_close(pgm.posterior_log_prob(post, x), dense, **TOL)
