"""Variable-length sequences in the SVAEs (float64, 1e-10): a padded, masked sequence in a batch gives exactly
what the unpadded sequence gives alone (SVAE-LDS: local KL, log Z, smoother marginals, the likelihood term,
the SVI statistics and the importance weights; SVAE-SLDS: the same for its structured mean field), whatever
the padded frames hold. A missing frame inside a sequence is bridged by the dynamics: it matches the dense
Gaussian with that frame's evidence removed."""
from __future__ import annotations

import pytest
import torch

from model.svae.kalman import chain_extent
from model.svae.lds import SVAELDS
from model.svae.slds import SVAESLDS
from tests.test_kalman import dense_joint
from utils.distributed import sum_statistics
from utils.tree import tensors

DT = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)
LENGTHS = [8, 5, 2, 6]


def padded_batch(T: int = 8, P: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real-valued frames (B, T, P) with lengths LENGTHS; the padding holds large garbage."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(T) < torch.tensor(LENGTHS)[:, None]
    x = torch.randn(len(LENGTHS), T, P, generator=gen, dtype=DT)
    x = torch.where(mask[..., None], x, 50.0 + 10 * torch.randn(x.shape, generator=gen, dtype=DT))
    return {"x": x, "mask": mask}


def lds_model() -> SVAELDS:
    torch.manual_seed(0)
    model = SVAELDS((8, 7), num_train=8, latent_dim=3, hidden_dims=[10], rho=0.5, prefix_len=4, horizon=3,
                    likelihood="gaussian").double()
    for seed in range(3):  # move q(theta) away from the prior: E[A^T Q^-1 A] is no longer E[A]^T E[Q^-1] E[A]
        model.train()
        model.after_optimizer_step(sum_statistics(model(padded_batch(seed=10 + seed))["statistics"]))
    return model.eval()


def slds_model() -> SVAESLDS:
    torch.manual_seed(0)
    model = SVAESLDS((8, 7), num_train=8, num_states=3, latent_dim=2, hidden_dims=[10], rho=0.5, prefix_len=4,
                     horizon=3, likelihood="gaussian", max_iter=6, tol=1e-300).double()  # always 6 sweeps
    for seed in range(3):
        model.train()
        model.after_optimizer_step(sum_statistics(model(padded_batch(seed=10 + seed))["statistics"]))
    return model.eval()


def one_by_one(model, batch: dict[str, torch.Tensor]):
    """Each sequence alone, unpadded: its observations and posterior."""
    potentials = model.expected_globals().potentials
    for b, length in enumerate(LENGTHS):
        y = batch["x"][b:b + 1, :length]
        yield b, length, y, model.infer(y, potentials, 0)


def assert_statistics_add_up(model, post, singles) -> None:
    """The batch's SVI statistics are the sum of the unpadded sequences' statistics (except SVAE-SLDS's
    revive_*: the worst-explained 1/K of a batch's steps is a choice over the whole batch; that it never picks
    a padded step is tested in tests/test_svae_slds.py)."""
    def without_revive(stats):
        return stats._replace(revive=None) if hasattr(stats, "revive") else stats

    batch_stats = without_revive(model.pgm.statistics(post))
    alone = [without_revive(model.pgm.statistics(single)) for single in singles]
    for value, *parts in zip(tensors(batch_stats), *(tensors(stats) for stats in alone)):
        torch.testing.assert_close(value, sum(parts), **TOL)


@pytest.mark.parametrize("inference", ["sequential", "parallel"])
def test_padded_lds_sequence_equals_the_sequence_alone(inference):
    model = lds_model()
    model.pgm.inference = inference
    batch = padded_batch(seed=5)
    potentials = model.expected_globals().potentials
    post = model.infer(batch["x"], potentials, 0, batch["mask"])
    singles = []
    for b, L, y, single in one_by_one(model, batch):
        singles.append(single)
        torch.testing.assert_close(post.kl[b], single.kl[0], **TOL)
        torch.testing.assert_close(post.smoothed.log_z[b], single.smoothed.log_z[0], **TOL)
        torch.testing.assert_close(post.smoothed.mean[b, :L], single.smoothed.mean[0], **TOL)
        torch.testing.assert_close(post.smoothed.cov[b, :L], single.smoothed.cov[0], **TOL)
        torch.testing.assert_close(post.smoothed.cross_cov[b, :L - 1], single.smoothed.cross_cov[0], **TOL)
        recon = model.log_likelihood(batch["x"], post.smoothed.mean[None], batch["mask"])[0, b]
        torch.testing.assert_close(recon, model.log_likelihood(y, single.smoothed.mean[None])[0, 0], **TOL)
    assert_statistics_add_up(model, post, singles)
    frames = model.evaluate_batch(batch, ("elbo",), {})["frames"]
    assert frames.tolist() == LENGTHS


def test_padded_lds_importance_weights_equal_the_sequence_alone():
    """log p(y, x) - log q(x) at a path: the frames after the end are N(0, I) under both, and cancel."""
    model = lds_model()
    batch = padded_batch(seed=6)
    potentials = model.expected_globals().potentials
    point = model.pgm.potentials(model.pgm.global_stats(point=True))
    post = model.infer(batch["x"], potentials, 2, batch["mask"])
    x = post.samples
    padded = model.pgm.prior_log_prob(point, x, batch["mask"]) - model.pgm.posterior_log_prob(post, x)
    for b, L, y, single in one_by_one(model, batch):
        alone = (model.pgm.prior_log_prob(point, x[:, b:b + 1, :L])
                 - model.pgm.posterior_log_prob(single, x[:, b:b + 1, :L]))
        torch.testing.assert_close(padded[:, b], alone[:, 0], **TOL)


def test_padded_slds_sequence_equals_the_sequence_alone():
    model = slds_model()
    batch = padded_batch(seed=7)
    potentials = model.expected_globals().potentials
    post = model.infer(batch["x"], potentials, 0, batch["mask"])
    point = model.pgm.potentials(model.pgm.global_stats(point=True))
    path = post.x.smoothed.mean[None]
    padded_iw = model.pgm.prior_log_prob(point, path, batch["mask"]) - model.pgm.posterior_log_prob(post, path)
    singles = []
    for b, L, y, single in one_by_one(model, batch):
        singles.append(single)
        torch.testing.assert_close(post.kl[b], single.kl[0], **TOL)
        torch.testing.assert_close(post.states.marginals[b, :L], single.states.marginals[0], **TOL)
        torch.testing.assert_close(post.states.pair_marginals[b, :L - 1], single.states.pair_marginals[0], **TOL)
        torch.testing.assert_close(post.x.smoothed.mean[b, :L], single.x.smoothed.mean[0], **TOL)
        torch.testing.assert_close(post.x.smoothed.cov[b, :L], single.x.smoothed.cov[0], **TOL)
        alone = path[:, b:b + 1, :L]
        torch.testing.assert_close(padded_iw[:, b], (model.pgm.prior_log_prob(point, alone)
                                                     - model.pgm.posterior_log_prob(single, alone))[:, 0], **TOL)
    assert int(post.iterations) == 6
    assert_statistics_add_up(model, post, singles)


def test_chain_extent_keeps_missing_frames_inside():
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, True, True]])
    assert chain_extent(mask).tolist() == [[True, True, True, False, False], [True, True, True, True, True]]


def test_a_missing_frame_is_bridged_by_the_dynamics():
    """A masked frame inside the sequence keeps its dynamics and loses its evidence: the marginals equal the
    dense joint Gaussian of the chain with that frame's node potential removed."""
    model = lds_model()
    batch = padded_batch(seed=8)
    mask = batch["mask"].clone()
    mask[0, 3] = False
    potentials = model.expected_globals().potentials
    post = model.infer(batch["x"][:1], potentials, 0, mask[:1])
    node_J, node_h = model.encoder(batch["x"][:1])
    node_J, node_h = node_J * mask[:1, :, None], node_h * mask[:1, :, None]
    log_z, mean, cov = dense_joint(potentials, node_J, node_h)
    n = node_h.shape[-1]
    torch.testing.assert_close(post.smoothed.mean.flatten(1), mean, **TOL)
    torch.testing.assert_close(post.smoothed.cov[:, 3], cov[:, 3 * n:4 * n, 3 * n:4 * n], **TOL)
    torch.testing.assert_close(post.smoothed.log_z, log_z, **TOL)


def test_the_objective_counts_real_frames_only():
    """Per frame of the batch: the local KL summed over sequences over their real frames (not B T), and the
    global KL shared over the training set's mean real frames per sequence."""
    model = lds_model()
    model.frames_per_example = 6.5
    batch = padded_batch(seed=9)
    potentials, kl_global = model.expected_globals()
    kl = model.infer(batch["x"], potentials, 0, batch["mask"]).kl
    out = model(batch)
    torch.testing.assert_close(out["kl_local"], kl.sum() / sum(LENGTHS), **TOL)
    torch.testing.assert_close(out["kl_global"], kl_global / (8 * 6.5), **TOL)
    torch.testing.assert_close(out["elbo"], out["recon"] - out["kl_local"] - out["kl_global"], **TOL)


def test_an_all_true_mask_is_inference_without_a_mask():
    """Full windows (every frame real) take the unmasked path: the same posterior, exactly."""
    model = slds_model()
    batch = padded_batch(seed=11)
    potentials = model.expected_globals().potentials
    full = torch.ones_like(batch["mask"])
    masked, plain = model.infer(batch["x"], potentials, 0, full), model.infer(batch["x"], potentials, 0)
    assert masked.x.within is None
    assert torch.equal(masked.kl, plain.kl) and torch.equal(masked.states.marginals, plain.states.marginals)
