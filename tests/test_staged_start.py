"""SVAE-SLDS's AR-HMM start (`init: ar_hmm`, SVAE.md section 8): the tied first stage is exactly SVAE-LDS (local
posterior, KL and SVI step), the Trainer hands `begin_epoch` the training set without labels, the fit lands in
q(theta) between the stages, and every stage resumes exactly."""
from __future__ import annotations

import copy

import pytest
import torch

from model.svae.lds import SVAELDS
from model.svae.slds import SVAESLDS
from tests.conftest import train_halfway_and_resume
from tests.test_svae_slds import slds_config  # noqa: F401  (fixture)
from trainer.components import load_and_check
from trainer.jobs import train
from utils.checkpoint import load_checkpoint
from utils.distributed import sum_statistics

DT = torch.float64


def tied_and_lds(seed: int = 0) -> tuple[SVAESLDS, SVAELDS]:
    """An SVAE-SLDS in its tied stage and an SVAE-LDS with the same networks and the same q(theta) of x."""
    torch.manual_seed(seed)
    args = dict(data_shape=(10, 3), num_train=8, latent_dim=2, hidden_dims=[8], prefix_len=4, horizon=3,
                likelihood="gaussian", rho=0.5)
    slds = SVAESLDS(num_states=3, init="ar_hmm", init_epochs=2, **args)
    lds = SVAELDS(**args)
    lds.encoder.load_state_dict(slds.encoder.state_dict())
    lds.decoder.load_state_dict(slds.decoder.state_dict())
    gen = torch.Generator().manual_seed(seed)
    for name in ("niw", "mniw"):  # a q(theta) away from the prior, the same in both
        value = [t + 0.1 * t.abs().mean() * torch.rand(t.shape, generator=gen, dtype=DT) for t in
                 lds.pgm.natural(name)]
        lds.pgm.set_natural(name, type(lds.pgm.natural(name))(*value))
        slds.pgm.set_natural(name, type(slds.pgm.natural(name))(*(
            v.expand_as(s) if name == "mniw" else v for v, s in zip(value, slds.pgm.natural(name)))))
    return slds, lds


def test_the_tied_stage_is_svae_lds():
    slds, lds = tied_and_lds()
    assert slds.pgm.tied
    y = torch.randn(4, 10, 3)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[1, 6:] = False
    a = slds.infer(y, slds.expected_globals().potentials, 0, mask)
    b = lds.infer(y, lds.expected_globals().potentials, 0, mask)
    assert torch.allclose(a.mean, b.mean, atol=1e-10) and torch.allclose(a.kl, b.kl, atol=1e-9)
    assert torch.allclose(a.x.smoothed.cov, b.smoothed.cov, atol=1e-10)


def test_the_tied_svi_step_moves_every_state_as_svae_lds_moves_its_dynamics():
    slds, lds = tied_and_lds()
    before = {name: [t.clone() for t in slds.pgm.natural(name)] for name in ("initial_state", "transitions")}
    y = torch.randn(4, 10, 3)
    torch.manual_seed(1)
    out_slds = slds({"x": y})
    torch.manual_seed(1)
    out_lds = lds({"x": y})
    slds.after_optimizer_step(sum_statistics(out_slds["statistics"]))
    lds.after_optimizer_step(sum_statistics(out_lds["statistics"]))
    for q_slds, q_lds in zip(slds.pgm.natural("mniw"), lds.pgm.natural("mniw")):
        for k in range(3):
            assert torch.allclose(q_slds[k], q_lds, atol=1e-10)
    for name, values in before.items():  # the discrete layer stays at its prior
        assert all(torch.equal(u, v) for u, v in zip(values, slds.pgm.natural(name)))
    assert torch.allclose(out_slds["recon"], out_lds["recon"]) and torch.allclose(out_slds["kl_local"],
                                                                                  out_lds["kl_local"])


def staged(config: dict, init_epochs: int = 2) -> dict:
    config = copy.deepcopy(config)
    config["arch"]["args"].update(init="ar_hmm", init_epochs=init_epochs, init_restarts=2, init_iters=5)
    config["trainer"].update(tensorboard=False, visualize_every=0)
    return config


def test_the_fit_lands_in_q_theta_and_reads_no_labels(slds_config, monkeypatch):
    """Before epoch init_epochs + 1 the states are tied and the discrete factors at their prior; begin_epoch then
    gets every training example once, in order, with no label field; after it the states differ and q(Pi)
    holds the whole training set's transitions (prior + N (T-1) counts)."""
    seen = []
    original = SVAESLDS.begin_epoch

    def spy(self, epoch, training_set):
        if epoch == 3:
            seen.extend(training_set())
        return original(self, epoch, training_set)

    monkeypatch.setattr(SVAESLDS, "begin_epoch", spy)
    config = staged(slds_config)
    config["trainer"]["epochs"] = 3
    run = train(load_and_check(base=config))
    assert seen and all("labels" not in batch and "y" not in batch for batch in seen)
    assert sum(len(batch["x"]) for batch in seen) == 12  # the 12 training sequences
    second = load_checkpoint(run.run_dir / "checkpoints" / "checkpoint-epoch2.pt")["model"]
    third = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")["model"]
    M = second["pgm.q_mniw_v_inv_mt"]
    assert all(torch.equal(M[0], M[k]) for k in range(len(M)))  # tied up to the fit
    assert torch.equal(second["pgm.q_transitions"], second["pgm.prior_transitions"])
    assert not torch.allclose(third["pgm.q_mniw_v_inv_mt"][0], third["pgm.q_mniw_v_inv_mt"][1])


@pytest.mark.parametrize("halfway", [1, 2, 3])
def test_every_stage_resumes_exactly(slds_config, halfway):
    """Stopped inside the tied stage (1), at its end, right before the fit (2), or after it (3), a resumed run
    ends with the uninterrupted run's model to the bit."""
    config = staged(slds_config)
    config["trainer"]["epochs"] = halfway
    train_halfway_and_resume(config, epochs=4)


@pytest.mark.parametrize("bad", [{"init": "warm"}, {"init_epochs": 0}, {"init_restarts": 0}, {"init_iters": 0}])
def test_init_arguments_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SVAESLDS(data_shape=(10, 3), num_train=8, **bad)
