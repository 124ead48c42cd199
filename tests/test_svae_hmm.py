"""SVAE-HMM: local inference against brute-force enumeration of z with dense Gaussians (float64), against
SVAE-GMM's local step at T = 1, a padded sequence against the sequence alone, and the architecture's training
step, metrics and prediction."""
from __future__ import annotations

import math

import pytest
import torch

from model.svae.gmm_inference import MixtureExpectations, local_meanfield, meanfield_update
from model.svae.hidden_markov import MarkovMixturePotentials, SVAEHMM, markov_mixture_meanfield, \
    markov_mixture_sweep
from tests.test_kalman import random_pd
from tests.test_slds_inference import enumerate_chain, random_weights
from utils.distributed import sum_statistics

DT = torch.float64
TOL = dict(atol=1e-9, rtol=1e-9)


def random_potentials(K: int, n: int, gen: torch.Generator) -> MarkovMixturePotentials:
    J = torch.stack([random_pd(n, gen) for _ in range(K)])
    mix = MixtureExpectations(torch.randn(K, generator=gen, dtype=DT), J, torch.randn(K, n, generator=gen, dtype=DT),
                              torch.randn(K, generator=gen, dtype=DT))
    return MarkovMixturePotentials(torch.randn(K, generator=gen, dtype=DT), torch.randn(K, K, generator=gen, dtype=DT),
                                   mix)


def random_nodes(B: int, T: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.2 + 2 * torch.rand(B, T, n, generator=gen, dtype=DT), torch.randn(B, T, n, generator=gen, dtype=DT)


@pytest.mark.parametrize("K,T,n", [(2, 3, 1), (3, 4, 2)])
def test_sweep_kl_and_marginals_are_the_brute_force_ones(K, T, n):
    """For weights that are not a fixed point: q(x_t) is the dense Gaussian psi_t + sum_k w_tk (J_k, h_k); q(z) is
    the enumerated chain with node log-potentials E_q(x_t)[log N(x_t | k)]; and the KL is
    E_q[log q(z)] + E_q[log q(x)] - E_q[log p(z)] - E_q[log p(x | z)], each term computed on its own."""
    gen = torch.Generator().manual_seed(100 * K + 10 * T + n)
    B = 2
    pot = random_potentials(K, n, gen)
    node_J, node_h = random_nodes(B, T, n, gen)
    weights = torch.cat([random_weights(B, T, K, gen), torch.softmax(torch.randn(B, 1, K, generator=gen,
                                                                                  dtype=DT), -1)], 1)
    post = markov_mixture_sweep(pot, node_J, node_h, weights, None)

    J = torch.diag_embed(node_J) + torch.einsum("btk,kij->btij", weights, pot.mix.J)
    cov = torch.linalg.inv(J)
    mean = (cov @ (node_h + weights @ pot.mix.h)[..., None])[..., 0]
    torch.testing.assert_close(post.mean, mean, **TOL)
    second = cov + mean[..., None] * mean[..., None, :]
    node = (-0.5 * torch.einsum("kij,btij->btk", pot.mix.J, second) + mean @ pot.mix.h.mT + pot.mix.const)
    _, marginals, pairs, e_log_qz = enumerate_chain(pot.log_init, pot.log_trans, node)
    torch.testing.assert_close(post.states.marginals, marginals, **TOL)
    torch.testing.assert_close(post.states.pair_marginals, pairs, **TOL)

    e_log_qx = (-0.5 * n * (1 + math.log(2 * math.pi)) - 0.5 * torch.logdet(cov)).sum(-1)
    e_log_pz = marginals[:, 0] @ pot.log_init + (pairs * pot.log_trans).sum((-3, -2, -1))
    e_log_px_given_z = (marginals * node).sum((-2, -1))
    torch.testing.assert_close(post.kl, e_log_qz + e_log_qx - e_log_pz - e_log_px_given_z, **TOL)


def test_one_frame_is_svae_gmms_local_step():
    """T = 1: the chain is one categorical with log weights E[log pi0]; sweep and mean field are SVAE-GMM's."""
    gen = torch.Generator().manual_seed(5)
    K, n, B = 4, 2, 6
    pot = random_potentials(K, n, gen)
    pot = pot._replace(mix=pot.mix._replace(log_weights=pot.log_init))
    node_J, node_h = random_nodes(B, 1, n, gen)
    weights = torch.softmax(torch.randn(B, 1, K, generator=gen, dtype=DT), -1)
    hmm = markov_mixture_sweep(pot, node_J, node_h, weights, None)
    gmm = meanfield_update(node_J[:, 0], node_h[:, 0], weights[:, 0], pot.mix)
    torch.testing.assert_close(hmm.kl, gmm.kl, atol=1e-10, rtol=0)
    torch.testing.assert_close(hmm.states.marginals[:, 0], gmm.responsibilities, atol=1e-10, rtol=0)
    hmm = markov_mixture_meanfield(pot, node_J, node_h, 50, 1e-8, None)
    gmm = local_meanfield(node_J[:, 0], node_h[:, 0], pot.mix, 50, 1e-8)
    torch.testing.assert_close(hmm.kl, gmm.kl, atol=1e-10, rtol=0)
    torch.testing.assert_close(hmm.states.marginals[:, 0], gmm.responsibilities, atol=1e-10, rtol=0)
    assert int(hmm.iterations) == int(gmm.iterations)


def tiny_model(networks: torch.dtype = DT) -> SVAEHMM:
    """Networks in `networks`' precision; the globals are float64 either way."""
    torch.manual_seed(0)
    model = SVAEHMM(data_shape=(8, 6), num_train=8, num_states=3, latent_dim=2, hidden_dims=[8], prefix_len=4,
                    horizon=3, eval_samples=3, rho=0.5)
    for module in (model.encoder, model.decoder):
        module.to(networks)
    return model


def test_a_padded_masked_sequence_is_the_sequence_alone():
    model = tiny_model().eval()
    gen = torch.Generator().manual_seed(1)
    y = torch.rand(1, 8, 6, generator=gen, dtype=DT)
    padded = torch.cat([y[:, :5], torch.rand(1, 3, 6, generator=gen, dtype=DT)], 1)
    mask = torch.arange(8)[None] < 5
    potentials = model.expected_globals().potentials
    alone, cut = model.infer(y[:, :5], potentials, 0), model.infer(padded, potentials, 0, mask)
    torch.testing.assert_close(cut.kl, alone.kl, atol=1e-10, rtol=0)
    torch.testing.assert_close(cut.states.marginals[:, :5], alone.states.marginals, atol=1e-10, rtol=0)
    stats_alone, stats_cut = model.pgm.statistics(alone), model.pgm.statistics(cut)
    for name in ("initial_state", "transitions", "count"):
        torch.testing.assert_close(getattr(stats_cut, name), getattr(stats_alone, name), atol=1e-10, rtol=0)
    for u, v in zip(stats_cut.components, stats_alone.components):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=0)
    x = torch.randn(2, 1, 8, 2, generator=gen, dtype=DT)
    torch.testing.assert_close(model.pgm.prior_log_prob(potentials, x, mask),
                               model.pgm.prior_log_prob(potentials, x[:, :, :5]), atol=1e-10, rtol=0)
    torch.testing.assert_close(model.pgm.posterior_log_prob(cut, x), model.pgm.posterior_log_prob(alone, x[:, :, :5]),
                               atol=1e-10, rtol=0)


def test_prior_log_prob_sums_the_states_out():
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 2, generator=gen, dtype=DT)
    point = model.pgm.potentials(model.pgm.global_stats(point=True))
    log_n = torch.distributions.MultivariateNormal(
        torch.linalg.solve(point.mix.J, point.mix.h[..., None])[..., 0], precision_matrix=point.mix.J)
    log_n = log_n.log_prob(x[..., None, :])  # (S, B, T, K)
    const_gap = point.mix.const - (log_n[0, 0, 0] + 0.5 * torch.einsum("i,kij,j->k", x[0, 0, 0], point.mix.J,
                                                                        x[0, 0, 0]) - point.mix.h @ x[0, 0, 0])
    paths = torch.cartesian_prod(*[torch.arange(3)] * 4)
    brute = torch.stack([point.log_init[z[0]] + point.log_trans[z[:-1], z[1:]].sum()
                         + (log_n[..., torch.arange(4), z] + const_gap[z]).sum(-1) for z in paths], -1)
    torch.testing.assert_close(model.pgm.prior_log_prob(point, x), torch.logsumexp(brute, -1), **TOL)


def test_training_step_statistics_metrics_and_prediction():
    model = tiny_model(torch.float32).train()
    gen = torch.Generator().manual_seed(3)
    batch = {"x": torch.rand(4, 8, 6, generator=gen), "labels": torch.randint(3, (4, 8), generator=gen)}
    out = model(batch)
    out["loss"].backward()
    statistics = sum_statistics(out["statistics"])
    assert float(statistics.count) == 4 and float(statistics.components.kappa.sum()) == pytest.approx(32)
    assert float(statistics.transitions.sum()) == pytest.approx(28)
    model.after_optimizer_step(statistics)
    model.eval()
    values = model.evaluate_batch(batch, ("elbo", "iw_nll", "state_ari", "pred_mse"), {"iw_samples": 4})
    assert values["state_probs"].shape == (4, 8, 3) and torch.isfinite(values["iw_nll"]).all()
    assert torch.isfinite(values["pred_sq_error"]).all()
