"""The structured core (model/svae/structured_vae.py, graphical_model.py) that SVAE-GMM and SVAE-LDS share:
the densities behind iw_nll against dense Gaussians and torch.distributions, iw_nll against the ELBO,
inference loops that torch.compile captures whole (no host reads, jitter by mask), and checkpoints
written before the core."""
from __future__ import annotations

import pytest
import torch
from torch import distributions as td

from model.expfam import dirichlet, mniw, niw
from model.expfam.psd import psd_cholesky
from model.svae.gmm import GaussianMixture
from model.svae.gmm_inference import meanfield_update
from model.svae.kalman import chain_log_potential, lds_posterior
from model.svae.lds import LinearDynamicalSystem
from tests.references import dense_joint
from tests.shrinks import tiny_config
from tests.test_kalman import random_nodes, random_prior
from tests.test_svae_gmm import random_globals, random_potentials
from tests.test_svae_regression import SHRINKS
from trainer import jobs
from trainer.components import build_data, build_model, load_and_check
from trainer.jobs import train

DT = torch.float64


def random_lds(n: int, gen: torch.Generator) -> LinearDynamicalSystem:
    """An LDS whose q(theta) is away from the prior: random standard parameters."""
    pgm = LinearDynamicalSystem(n)
    a = torch.randn(n, n, generator=gen, dtype=DT)
    S = a @ a.mT + n * torch.eye(n, dtype=DT)
    nu = torch.tensor(n + 4.0, dtype=DT)
    q_niw = niw.standard_to_natural(torch.randn(n, generator=gen, dtype=DT), torch.tensor(2.0, dtype=DT), S, nu)
    q_mniw = mniw.standard_to_natural(0.5 * torch.randn(n, n, generator=gen, dtype=DT), torch.eye(n, dtype=DT) / 3,
                                      S, nu)
    for name, value in (("niw", q_niw), ("mniw", q_mniw)):
        for field, tensor in zip(value._fields, value):
            getattr(pgm, f"q_{name}_{field}").copy_(tensor)
    return pgm


def random_mixture(K: int, d: int, gen: torch.Generator) -> GaussianMixture:
    pgm = GaussianMixture(K, d, max_iter=200, tol=1e-10, prior_alpha=1.0, prior_kappa=0.5, prior_nu_offset=0.5,
                          init_mean_scale=3.0)
    dir_nat, niw_nat = random_globals(K, d, gen)
    pgm.q_dirichlet.copy_(dir_nat)
    for field, tensor in zip(niw_nat._fields, niw_nat):
        getattr(pgm, f"q_niw_{field}").copy_(tensor)
    return pgm


# ---------------------------------------------------------------- densities behind iw_nll
def test_lds_densities_equal_dense_gaussians():
    """log q(x) of the smoothed chain equals the dense posterior Gaussian's log-density; log p(x | theta-bar)
    equals log N(x_1 | m0, Sigma0) + sum_t log N(x_t+1 | M x_t, Q) at the point estimate."""
    gen = torch.Generator().manual_seed(0)
    B, T, n, S = 3, 5, 2, 4
    pgm = random_lds(n, gen)
    expected = pgm.potentials(pgm.global_stats())
    node_J, node_h = random_nodes(B, T, n, gen)
    post = pgm.infer(expected, node_J, node_h, num_samples=S)
    x = post.samples
    _, mean, cov = dense_joint(expected, node_J, node_h)
    dense_q = td.MultivariateNormal(mean, cov).log_prob(x.reshape(S, B, T * n))
    torch.testing.assert_close(pgm.posterior_log_prob(post, x), dense_q)

    m0, _, S0, nu0 = niw.natural_to_standard(pgm.natural("niw"))
    M, _, SQ, nu = mniw.natural_to_standard(pgm.natural("mniw"))
    exact = (td.MultivariateNormal(m0, S0 / nu0).log_prob(x[:, :, 0])
             + td.MultivariateNormal(x[:, :, :-1] @ M.mT, SQ / nu).log_prob(x[:, :, 1:]).sum(-1))
    point = pgm.potentials(pgm.global_stats(point=True))
    torch.testing.assert_close(pgm.prior_log_prob(point, x), exact)


def test_mixture_densities_equal_torch_distributions():
    """log q(x) is the mean-field Gaussian's; log p(x | theta-bar) = log sum_k E[pi_k] N(x | m_k, S_k / nu_k)."""
    gen = torch.Generator().manual_seed(1)
    K, d, B, S = 4, 2, 6, 5
    pgm = random_mixture(K, d, gen)
    node_J, node_h = random_potentials(B, d, gen)
    post = pgm.infer(pgm.potentials(pgm.global_stats()), node_J, node_h, num_samples=S)
    x = post.samples
    q_x = td.MultivariateNormal(post.mean, precision_matrix=post.gaussian.J)
    torch.testing.assert_close(pgm.posterior_log_prob(post, x), q_x.log_prob(x))

    alpha = dirichlet.natural_to_alpha(pgm.natural("dirichlet"))
    m, _, S_k, nu = niw.natural_to_standard(pgm.natural("niw"))
    mixture = td.MixtureSameFamily(td.Categorical(probs=alpha / alpha.sum()),
                                   td.MultivariateNormal(m, S_k / nu[:, None, None]))
    point = pgm.potentials(pgm.global_stats(point=True))
    torch.testing.assert_close(pgm.prior_log_prob(point, x), mixture.log_prob(x))


@pytest.fixture(scope="module", params=["svae_gmm", pytest.param("svae_lds", marks=pytest.mark.integration)])
def trained_svae(request, tmp_path_factory):
    """A shrunk shipped SVAE config trained for 30 epochs, evaluated with iw_nll."""
    name = request.param
    config = tiny_config(name, "regression", epochs=30, len_epoch=SHRINKS[name][2],
                         save_dir=tmp_path_factory.mktemp(name))
    config["metrics"] = ["elbo", "iw_nll"]
    return train(load_and_check(base=config)).run_dir / "checkpoints" / "last.pt"


def test_iw_nll_is_below_the_negative_elbo_and_falls_with_k(trained_svae):
    """Measured: SVAE-GMM 7.85, 7.08, 6.79 nats per point for K = 1, 10, 300 against -ELBO 8.6; SVAE-LDS
    5.78, 5.65, 5.55 nats per frame against 5.99."""
    by_k = {k: jobs.evaluate(trained_svae, iw_samples=k, progress=False) for k in (1, 10, 300)}
    for results in by_k.values():
        assert results["iw_nll"] <= -results["elbo"], results
    assert by_k[1]["iw_nll"] > by_k[10]["iw_nll"] > by_k[300]["iw_nll"]
    assert by_k[300]["iw_samples"] == 300


# ---------------------------------------------------------------- no host reads in the inference loops
def compiled(fn):
    """fn captured as one graph: a data-dependent branch (a host read) would fail here."""
    return torch.compile(fn, fullgraph=True, backend="eager")


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_kalman_inference_is_captured_whole_by_torch_compile(method):
    gen = torch.Generator().manual_seed(2)
    prior = random_prior(2, gen)
    node_J, node_h = random_nodes(3, 6, 2, gen)
    torch.manual_seed(0)
    eager = lds_posterior(prior, node_J, node_h, 2, method)
    torch.manual_seed(0)
    graph = compiled(lambda J, h: lds_posterior(prior, J, h, 2, method))(node_J, node_h)
    for a, b in zip(eager, graph):
        torch.testing.assert_close(a, b)


def test_meanfield_sweep_and_masked_jitter_are_captured_whole_by_torch_compile():
    gen = torch.Generator().manual_seed(3)
    pgm = random_mixture(3, 2, gen)
    mix = pgm.potentials(pgm.global_stats())
    node_J, node_h = random_potentials(5, 2, gen)
    r = torch.softmax(torch.randn(5, 3, generator=gen, dtype=DT), -1)
    for a, b in zip(meanfield_update(node_J, node_h, r, mix), compiled(meanfield_update)(node_J, node_h, r, mix)):
        torch.testing.assert_close(a, b)
    singular = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]],
                            dtype=DT)
    chol, retried = compiled(psd_cholesky)(singular)
    assert retried.tolist() == [True, False, True] and torch.isnan(chol[2]).all()
    torch.testing.assert_close(chol[:2] @ chol[:2].mT, singular[:2], atol=1e-7, rtol=0)  # A + jitter I
    assert (chol[:2].diagonal(dim1=-2, dim2=-1) > 0).all()  # a valid factor: positive diagonal
    torch.testing.assert_close(chol[:2], psd_cholesky(singular[:2])[0])


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", sorted(SHRINKS))
def test_checkpoints_from_before_the_core_still_load(name):
    """The globals used to sit at the top of the state dict (`q_niw_phi`); they now live in `pgm.`. The MNIW's
    natural parameters were named after K (`q_mniw_k_inv`); now after V (`q_mniw_v_inv`)."""
    config = load_and_check(base=tiny_config(name, "regression"))
    data = build_data(config)
    model, fresh = build_model(config, data), build_model(config, data)
    for buffer in model.pgm.buffers():
        buffer.add_(0.25)
    old_format = {key.removeprefix("pgm.").replace("_mniw_v_inv", "_mniw_k_inv"): value
                  for key, value in model.state_dict().items()}
    assert "q_niw_phi" in old_format
    fresh.load_state_dict(old_format)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_chain_log_potential_takes_time_varying_pair_potentials():
    """What a switching LDS needs: per-step pair potentials (B, T-1, ...) give the shared ones' value when
    they repeat them, and differ when one step changes."""
    gen = torch.Generator().manual_seed(4)
    prior = random_prior(2, gen)
    B, T = 3, 5
    x = torch.randn(4, B, T, 2, generator=gen, dtype=DT)
    per_step = prior._replace(**{name: getattr(prior, name).expand(B, T - 1, 2, 2).clone()
                                 for name in ("J11", "J12", "J22")},
                              pair_const=prior.pair_const.expand(B, T - 1).clone())
    torch.testing.assert_close(chain_log_potential(per_step, x), chain_log_potential(prior, x))
    per_step.pair_const[1, 2] += 1.0
    difference = chain_log_potential(per_step, x) - chain_log_potential(prior, x)
    torch.testing.assert_close(difference, torch.tensor([0.0, 1.0, 0.0], dtype=DT).expand(4, B))
