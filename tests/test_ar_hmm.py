"""The AR(1)-HMM start of SVAE-SLDS (model/svae/ar_hmm.py, SVAE.md section 8): on trajectories drawn from a known
3-state AR-HMM, variational EM recovers the segmentation and each state's dynamics; its q(theta) is the
closed-form conjugate update of its own q(z) (prior + expected counts); the bound picks the restart; padded
frames change nothing; and `start_from_ar_hmm` puts the fit into the SLDS's factors."""
from __future__ import annotations

import math

import pytest
import torch

from model.expfam import dirichlet
from model.expfam.mniw import MNIWNatural, natural_to_standard
from model.metrics import adjusted_rand_index, match_labels
from model.svae.ar_hmm import ARHMMPrior, StepMoments, fit_ar_hmm, pooled_dynamics_prior, step_features
from model.svae.chain import dynamics_prior
from model.svae.slds import SwitchingLinearDynamicalSystem

DT = torch.float64


def rotation(angle: float, radius: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return radius * torch.tensor([[c, -s], [s, c]], dtype=DT)


#: three dynamics that differ in how they move, not where: turning left, turning right, contracting with shear
TRUE_A = torch.stack([rotation(0.7, 0.98), rotation(-0.7, 0.98), torch.tensor([[0.8, 0.4], [0.0, 0.7]], dtype=DT)])
TRUE_Q_CHOL = torch.stack([0.3 * torch.eye(2, dtype=DT), 0.25 * torch.eye(2, dtype=DT),
                           torch.tensor([[0.4, 0.0], [0.1, 0.3]], dtype=DT)])
STAY = 0.95


def sample_ar_hmm(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Trajectories x (B, T, 2) and states z (B, T) of the 3-state AR-HMM above (z_t governs the step t -> t+1)."""
    gen = torch.Generator().manual_seed(seed)
    K = len(TRUE_A)
    P = torch.full((K, K), (1 - STAY) / (K - 1), dtype=DT).fill_diagonal_(STAY)
    z = torch.zeros(B, T, dtype=torch.long)
    x = torch.zeros(B, T, 2, dtype=DT)
    z[:, 0] = torch.randint(K, (B,), generator=gen)
    x[:, 0] = 3 * torch.randn(B, 2, generator=gen, dtype=DT)
    for t in range(T - 1):
        noise = torch.randn(B, 2, 1, generator=gen, dtype=DT)
        x[:, t + 1] = (TRUE_A[z[:, t]] @ x[:, t, :, None] + TRUE_Q_CHOL[z[:, t]] @ noise).squeeze(-1)
        z[:, t + 1] = torch.multinomial(P[z[:, t]], 1, generator=gen).squeeze(-1)
    return x, z


def fit(x: torch.Tensor, prior: ARHMMPrior | None = None, steps: torch.Tensor | None = None, **kwargs):
    """fit_ar_hmm on point trajectories x (B, T, n)."""
    return fit_ar_hmm(StepMoments.of_points(x), step_features(x), slds_prior() if prior is None else prior, steps,
                      **kwargs)


def slds_prior(K: int = 3, n: int = 2) -> ARHMMPrior:
    return ARHMMPrior(dirichlet.alpha_to_natural(torch.ones(K, dtype=DT)),
                      dirichlet.alpha_to_natural(1 + 10 * torch.eye(K, dtype=DT)), dynamics_prior(n, K))


@pytest.fixture(scope="module")
def generated() -> tuple[torch.Tensor, torch.Tensor]:
    return sample_ar_hmm(B=20, T=100)


def test_recovers_the_segmentation_and_the_dynamics_of_a_known_ar_hmm(generated):
    x, z = generated
    prior = slds_prior()
    fitted = fit(x, prior, restarts=3, generator=torch.Generator().manual_seed(0))
    states = fitted.marginals[:, :-1].argmax(-1).flatten()
    truth = z[:, :-1].flatten()
    assert adjusted_rand_index(truth, states) > 0.9
    matched = match_labels(states, truth, 3)  # inferred state -> true state
    M, _, Psi, nu = natural_to_standard(MNIWNatural(*(p + c for p, c in zip(prior.dynamics, fitted.dynamics))))
    for k in range(3):
        true_k = int(matched[k])
        assert torch.allclose(M[k], TRUE_A[true_k], atol=0.05), (k, M[k], TRUE_A[true_k])
        true_Q = TRUE_Q_CHOL[true_k] @ TRUE_Q_CHOL[true_k].T
        assert torch.allclose(Psi[k] / nu[k], true_Q, rtol=0.2, atol=0.01), (k, Psi[k] / nu[k], true_Q)


def test_counts_are_the_conjugate_update_of_its_own_state_posterior(generated):
    """The fit's counts are the expected statistics of its q(z): q(z_1) summed, the pair marginals summed, and
    each state's weighted (x_t x_t^T, x_t x_t+1^T, x_t+1 x_t+1^T, 1), recomputed here by explicit sums."""
    x, _ = generated
    x = x[:4, :30]
    fitted = fit(x, restarts=1, max_iter=5)
    w = fitted.marginals[:, :-1]  # (B, T-1, K)
    assert torch.allclose(fitted.initial_state, fitted.marginals[:, 0].sum(0))
    assert torch.allclose(fitted.transitions.sum(), torch.tensor(4 * 29.0, dtype=DT))
    for k in range(3):
        now = torch.einsum("bt,bti,btj->ij", w[..., k], x[:, :-1], x[:, :-1])
        cross = torch.einsum("bt,bti,btj->ij", w[..., k], x[:, :-1], x[:, 1:])
        assert torch.allclose(fitted.dynamics.v_inv[k], now) and torch.allclose(fitted.dynamics.v_inv_mt[k], cross)
        assert torch.allclose(fitted.dynamics.nu[k], w[..., k].sum())


def test_the_restart_with_the_highest_bound_wins(generated):
    x, _ = generated
    fitted = fit(x[:6, :40], restarts=4, max_iter=3, generator=torch.Generator().manual_seed(3))
    assert len(fitted.restart_bounds) == 4 and fitted.bound == max(fitted.restart_bounds)
    assert len(set(fitted.restart_bounds)) > 1  # the restarts really start apart


def test_frames_past_the_end_of_a_chain_change_nothing(generated):
    """Sequences cut by `within` fit the same whatever their padded frames hold, and every count sums over the
    real steps only."""
    x, _ = generated
    x = x[:6, :40].clone()
    within = torch.ones(6, 40, dtype=torch.bool)
    within[:3, 25:] = False
    fits = []
    for fill in (0.0, 50.0):
        padded = torch.where(within[..., None], x, fill)
        fits.append(fit(padded, steps=within[:, 1:], restarts=2, max_iter=10,
                        generator=torch.Generator().manual_seed(0)))
    first, second = ([one.initial_state, one.transitions, *one.dynamics, one.marginals[within]] for one in fits)
    for u, v in zip(first, second):
        assert torch.allclose(u, v, atol=1e-9)
    real_steps = torch.tensor(3 * 24 + 3 * 39, dtype=DT)
    assert torch.allclose(fits[0].transitions.sum(), real_steps)
    assert torch.allclose(fits[0].dynamics.nu.sum(), real_steps)


def test_start_from_ar_hmm_sets_the_slds_factors_to_prior_plus_counts(generated):
    x, _ = generated
    pgm = SwitchingLinearDynamicalSystem(3, 2, stickiness=10.0)
    fitted = pgm.start_from_ar_hmm(x, StepMoments.of_points(x), torch.ones(x.shape[:2]).double()[:, 1:], restarts=2,
                                   max_iter=20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pgm.natural("transitions"), pgm.natural("transitions", prior=True) + fitted.transitions)
    assert torch.allclose(pgm.natural("initial_state"),
                          pgm.natural("initial_state", prior=True) + fitted.initial_state)
    for q, p, c in zip(pgm.natural("mniw"), pgm.natural("mniw", prior=True), fitted.dynamics):
        assert torch.allclose(q, p + c)
    assert torch.allclose(pgm.usage.sum(), torch.tensor(1.0, dtype=DT))


def test_the_pooled_prior_is_one_least_squares_fit_weighing_n_plus_2_steps(generated):
    """Empirical Bayes: the prior's mean dynamics are the least-squares AR fit of every step (torch.linalg.lstsq
    here), its mean noise the residual covariance, and it counts as n + 2 steps; real steps only."""
    x, _ = generated
    x = x[:5, :30]
    steps = torch.ones(5, 29, dtype=DT)
    steps[0, 20:] = 0.0
    prior = pooled_dynamics_prior(StepMoments.of_points(x, intercept=True), steps, num_states=3)
    M, _, Psi, nu = natural_to_standard(prior)
    inputs = torch.cat([x[:, :-1], torch.ones_like(x[:, :-1, :1])], -1)[steps > 0]  # (steps, 3)
    outputs = x[:, 1:][steps > 0]
    solution = torch.linalg.lstsq(inputs, outputs).solution  # (3, 2): outputs = inputs @ solution
    residual = outputs - inputs @ solution
    assert M.shape == (3, 2, 3) and torch.allclose(M[1], solution.T, atol=1e-10)
    assert torch.allclose(nu, torch.full((3,), 4.0, dtype=DT))
    assert torch.allclose(Psi[2] / nu[2], residual.T @ residual / len(outputs), atol=1e-10)
