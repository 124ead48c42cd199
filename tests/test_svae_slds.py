"""SVAE-SLDS beyond the inference math (tests/test_slds_inference.py): the switching-dots data, the revival of
unused states, state_ari, numerical safety and the architecture end to end (train, resume, test.py, figures)."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from data_loader.dots import render_positions, triangle_wave
from data_loader.switching_dots import SwitchingDotsDataLoader, sticky_markov_states
from model.expfam import mniw
from model.expfam.mniw import MNIWNatural
from model.svae.slds import SVAESLDS, SwitchingLinearDynamicalSystem
from tests.conftest import ROOT, assert_finite_under_extreme_encoder, event_tags, train_halfway_and_resume
from trainer import jobs
from utils.config import read_config_file
from utils.distributed import sum_statistics
from utils.errors import ConfigError

DT = torch.float64


# ---------------------------------------------------------------- data
def test_states_set_the_speed_of_each_move():
    """Frame t + 1's phase is frame t's plus speeds[z_t] * frame_interval: recover the phases from the
    noiseless frames' positions and check every move."""
    speeds = [0.3, 1.0, 2.0]
    data = SwitchingDotsDataLoader(batch_size=4, speeds=speeds, num_sequences=6, num_test_sequences=2,
                                   chunk_len=30, render_sigma=0.15, image_width=200)
    batch = data.train_set.tensors
    states, clean = batch["labels"], batch["clean"].double()
    assert states.shape == (6, 30) and states.dtype == torch.long and clean.shape == (6, 30, 200)
    grid = torch.linspace(-1, 1, 200, dtype=DT)
    position = grid[clean.argmax(-1)]
    # with each move's speed known, the first frame's phase reproduces every later position
    moves = torch.tensor(speeds, dtype=DT)[states[:, :-1]] * 0.1
    phase0 = torch.linspace(0, 2, 20001, dtype=DT)
    candidates = triangle_wave(phase0[:, None, None] + torch.cat([torch.zeros(6, 1, dtype=DT), moves.cumsum(1)], 1))
    error = (candidates - position).abs().amax(-1)  # (phases, B)
    assert (error.min(0).values < 0.02).all()  # grid spacing 0.01
    assert torch.allclose(render_positions(position[:, :1], 200, 0.15).float(), batch["clean"][:, :1], atol=0.05)
    assert (batch["x"] - batch["clean"]).std() == pytest.approx(0.1, rel=0.1)


def test_sticky_chain_stays_with_its_probability_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    states = sticky_markov_states(400, 100, 3, 0.9, gen)
    stays = (states[:, 1:] == states[:, :-1]).double().mean()
    assert float(stays) == pytest.approx(0.9, abs=0.01)
    assert torch.bincount(states.flatten(), minlength=3).double().div(states.numel()).sub(1 / 3).abs().max() < 0.03
    again = sticky_markov_states(400, 100, 3, 0.9, torch.Generator().manual_seed(0))
    assert torch.equal(states, again)


@pytest.mark.parametrize("args", [{"speeds": []}, {"speeds": [1.0, -1.0]}, {"stay_prob": 1.5}, {"chunk_len": 1},
                                  {"num_test_sequences": 0}])
def test_bad_data_arguments_name_the_key(args):
    with pytest.raises(ConfigError, match=next(iter(args))):
        SwitchingDotsDataLoader(**args)


# ---------------------------------------------------------------- revival of unused states
def test_the_least_used_state_restarts_fitted_to_the_worst_explained_steps():
    torch.manual_seed(0)
    pgm = SwitchingLinearDynamicalSystem(num_states=3, latent_dim=2, revive_below=0.05)
    before = [t.clone() for t in pgm.natural("mniw")]
    prior = pgm.natural("mniw", prior=True)
    stats = MNIWNatural(2 * torch.eye(2, dtype=DT), 0.5 * torch.eye(2, dtype=DT), 3 * torch.eye(2, dtype=DT),
                        torch.tensor(4.0, dtype=DT))
    pgm.usage.copy_(torch.tensor([0.3, 0.01, 0.03], dtype=DT))  # states 1 and 2 under 0.05: the least used, 1
    counts = torch.tensor([[90.0, 0.1, 5.0], [0.2, 0.3, 0.1], [7.0, 0.1, 30.0]], dtype=DT)
    pgm.set_natural("transitions", counts)
    pgm.revive_unused_state(stats, 10.0)
    stay, move = (90.0 + 0.3 + 30.0) / 3, (0.1 + 5.0 + 0.2 + 0.1 + 7.0 + 0.1) / 6  # a typical state's counts
    expected = counts.clone()
    expected[1], expected[:, 1] = move, move
    expected[1, 1] = stay
    assert torch.allclose(pgm.natural("transitions"), expected)
    after = pgm.natural("mniw")
    for new, old, p, statistic in zip(after, before, prior, stats):
        assert torch.allclose(new[1], p[1] + 10.0 * statistic)  # prior + scale * the statistics
        assert torch.equal(new[0], old[0]) and torch.equal(new[2], old[2])  # one state per step
    assert int(pgm.revivals) == 1 and pgm.usage[1] == pytest.approx(1 / 3) and pgm.usage[2] == 0.03
    pgm.revive_unused_state(stats, 10.0, taken=torch.tensor(False))  # a skipped step revives nothing
    assert int(pgm.revivals) == 1 and pgm.usage[2] == 0.03
    pgm.usage.copy_(torch.tensor([0.3, 0.4, 0.3], dtype=DT))  # every state used: nothing changes
    pgm.revive_unused_state(stats, 10.0)
    assert int(pgm.revivals) == 1


def test_worst_steps_are_the_lowest_expected_log_potentials_inside_the_chains():
    """Against sorting E_q(z)[l_t] by hand: the 1/K lowest of the steps inside the chains, and the revival
    statistics are those steps' moments."""
    torch.manual_seed(1)
    model = tiny_model()
    batch = random_batch()
    mask = torch.ones(batch["x"].shape[:2], dtype=torch.bool)
    mask[0, 5:] = False  # a short first sequence: its steps past the end are never picked
    batch["mask"] = mask
    post = model.infer(batch["x"], model.expected_globals().potentials, 1, mask)
    steps = post.x.step_weights()
    worst = model.pgm.worst_steps(post, steps)
    fit = (post.states.marginals[:, :-1] * post.pair).sum(-1).detach()
    inside = steps > 0
    count = max(1, fit.numel() // model.pgm.num_states)
    expected = torch.zeros_like(fit, dtype=torch.bool)
    order = sorted(((float(fit[b, t]), b, t) for b, t in zip(*torch.nonzero(inside, as_tuple=True))))[:count]
    for _, b, t in order:
        expected[b, t] = True
    assert torch.equal(worst > 0, expected) and not (worst[0, 4:] > 0).any()
    second, cross = post.x.second_moments()
    stats = model.pgm.statistics(post)
    picked = expected.to(DT)
    assert torch.allclose(stats.revive.v_inv_mt, torch.einsum("bt,btij->ij", picked * steps, cross.detach()))
    assert torch.allclose(stats.revive.phi, torch.einsum("bt,btij->ij", picked * steps, second[:, 1:].detach()))
    assert float(stats.revive.nu) == pytest.approx(float((picked * steps).sum()))


def test_revival_follows_the_svi_step_and_can_be_switched_off():
    torch.manual_seed(0)
    model = tiny_model()
    out = model.train()(random_batch())
    statistics = sum_statistics(out["statistics"])
    statistics = statistics._replace(mniw=statistics.mniw._replace(nu=torch.tensor([0.0, 30.0, 5.0], dtype=DT)))
    model.pgm.usage.copy_(torch.tensor([0.0, 0.9, 0.1], dtype=DT))
    model.after_optimizer_step(statistics)
    assert int(model.pgm.revivals) == 1
    off = tiny_model(revive_below=0.0)
    off.after_optimizer_step(statistics)
    assert int(off.pgm.revivals) == 0
    skipped = tiny_model()  # a step skipped on the device (non-finite loss): no SVI step and no revival
    before = [b.clone() for b in skipped.buffers()]
    skipped.after_optimizer_step(statistics, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, skipped.buffers()))


# ---------------------------------------------------------------- the architecture
def tiny_model(num_train: int = 8, **kwargs) -> SVAESLDS:
    torch.manual_seed(0)
    args = dict(num_states=3, latent_dim=2, hidden_dims=[8], prefix_len=4, horizon=3, eval_samples=3, rho=0.5)
    return SVAESLDS(data_shape=(8, 6), num_train=num_train, **{**args, **kwargs})


def random_batch(B: int = 4, T: int = 8, P: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.rand(B, T, P, generator=gen)
    return {"x": clean + 0.1 * torch.randn(B, T, P, generator=gen), "clean": clean,
            "labels": torch.randint(3, (B, T), generator=gen)}


def test_forward_changes_no_state_and_the_statistics_count_frames():
    model = tiny_model().train()
    before = [b.clone() for b in model.buffers()]
    out = model(random_batch())
    statistics = out["statistics"]
    assert statistics.count.tolist() == [4.0]
    assert float(statistics.mniw.nu.sum()) == pytest.approx(4 * 7)
    assert float(statistics.transitions.sum()) == pytest.approx(4 * 7)
    assert float(statistics.initial_state.sum()) == pytest.approx(4)
    model.after_optimizer_step(None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert {"states_in_use", "meanfield_iters", "jitter_retries", "kl_local"} <= out.keys()


@pytest.mark.parametrize("init, offset", [("random", 0), ("ar_hmm", 3)])
def test_annealing_schedule_falls_linearly_to_one_over_the_untied_epochs(init, offset):
    model = tiny_model(anneal_temperature=5.0, anneal_epochs=4, init=init, init_epochs=3)
    temperatures = []
    for done in [0, 1, 2, 3, 4, 5, 6, 9]:
        model.set_epochs_done(done + offset)
        temperatures.append(model.schedule_values()["z_temperature"])
    assert temperatures == [5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert "z_temperature" not in tiny_model().schedule_values(), "no annealing, no schedule to show"


def test_annealed_loss_is_the_elbo_plus_the_weighted_entropy_and_the_elbo_at_temperature_one():
    """At temperature tau the training loss is -(ELBO + (tau - 1) H(q(z)) per frame), q(z) tempered; at tau = 1 it is
    bit for bit the loss of the model without annealing."""
    batch = random_batch()
    annealed, plain = tiny_model(anneal_temperature=3.0, anneal_epochs=2).train(), tiny_model().train()
    plain.load_state_dict(annealed.state_dict())
    torch.manual_seed(1)
    hot = annealed(batch)
    torch.manual_seed(1)
    post = annealed.infer(batch["x"], annealed.expected_globals().potentials, 1)
    frames = batch["x"].shape[1]
    torch.testing.assert_close(hot["loss"], -hot["elbo"] - 2.0 * post.z_entropy.mean() / frames, atol=1e-10, rtol=0)
    torch.manual_seed(1)
    cold_plain = plain(batch)
    assert not torch.equal(hot["loss"], cold_plain["loss"])
    annealed.set_epochs_done(2)
    torch.manual_seed(1)
    cold = annealed(batch)
    assert torch.equal(cold["loss"], cold_plain["loss"]) and torch.equal(cold["loss"], -cold["elbo"])
    annealed.set_epochs_done(0)  # evaluation infers at temperature 1 whatever the schedule
    elbos = []
    for model in (annealed.eval(), plain.eval()):
        torch.manual_seed(1)
        elbos.append(model(batch)["elbo"])
    assert torch.equal(*elbos)


def test_extreme_encoder_outputs_stay_finite():
    x = random_batch()["x"]
    assert_finite_under_extreme_encoder(tiny_model(), [x, x * 1e6], 2)


@pytest.mark.parametrize("name", ["state_ari", "state_nmi", "state_accuracy"])
def test_segmentation_metrics_are_one_for_a_relabelled_segmentation(name):
    model = tiny_model().eval()
    batch = random_batch()
    out = model.evaluate_batch(batch, (name,), {})
    assert out["state_probs"].shape == (4, 8, 3) and torch.equal(out["frame_labels"], batch["labels"])
    metric = next(m for m in model.metrics if m.name == name)
    relabelled = torch.nn.functional.one_hot((batch["labels"] + 1) % 3, 3).double()
    assert metric.report({"state_probs": relabelled, "frame_labels": batch["labels"]}) == {name: 1.0}
    if name != "state_accuracy":
        assert abs(metric.report(out)[name]) < 0.5  # an untrained model: about chance


def test_segmentation_metrics_skip_padding_and_pool_every_frame():
    """Over the labelled frames of all sequences at once: -1 (padding) frames count nowhere, and the score of
    two halves is not the mean of the halves' scores."""
    model = tiny_model().eval()
    labels = torch.tensor([[0, 0, 1, 1, -1, -1], [2, 2, 2, 0, 0, -1]])
    states = torch.tensor([[1, 1, 2, 2, 0, 1], [0, 0, 0, 1, 2, 2]])
    probs = torch.nn.functional.one_hot(states, 3).double()
    report = {m.name: m.report({"state_probs": probs, "frame_labels": labels}) for m in model.metrics
              if m.name.startswith("state_")}
    real = labels >= 0
    # matched: state 1 -> label 0 (3 frames), 2 -> 1 (2), 0 -> 2 (3); the last real frame (state 2, label 0) is wrong
    assert report["state_accuracy"]["state_accuracy"] == pytest.approx(8 / 9)
    from model.metrics import adjusted_rand_index
    assert report["state_ari"]["state_ari"] == adjusted_rand_index(labels[real], states[real])


# ---------------------------------------------------------------- end to end
def pair_counting_ari(truth: list[int], found: list[int]) -> float:
    """The adjusted Rand index by counting agreeing pairs (Hubert and Arabie), written apart from model.metrics."""
    pairs = lambda counts: sum(math.comb(c, 2) for c in counts)  # noqa: E731
    index = pairs(Counter(zip(truth, found)).values())
    rows, cols, total = pairs(Counter(truth).values()), pairs(Counter(found).values()), math.comb(len(truth), 2)
    expected = rows * cols / total
    return 1.0 if (rows + cols) / 2 == expected else (index - expected) / ((rows + cols) / 2 - expected)


@pytest.fixture
def slds_config(tmp_path) -> dict:
    """configs/svae_slds.yaml shrunk: 12 sequences of 12 frames, latent 2, 2 epochs of 3 steps."""
    config = read_config_file(ROOT / "configs" / "svae_slds.yaml")
    config["arch"]["args"].update(latent_dim=2, hidden_dims=[8], prefix_len=6, horizon=5, eval_samples=2,
                                  max_iter=5)
    config["data_loader"]["args"].update(chunk_len=12, num_sequences=12, num_test_sequences=3, batch_size=4)
    config["trainer"].update(epochs=2, len_epoch=3, save_dir=str(tmp_path / "saved"), save_period=1,
                             verbosity=0, tensorboard=True, visualize_every=1)
    return config


@pytest.mark.integration
def test_train_resume_and_evaluate(slds_config, monkeypatch):
    run_dir, state = train_halfway_and_resume(slds_config, epochs=4)
    assert {"pgm.q_transitions", "pgm.q_initial_state", "pgm.q_mniw_v_inv", "pgm.revivals"} <= state["model"].keys()
    path = run_dir / "checkpoints" / "last.pt"

    seen = []  # the per-example outputs that test.py reduces: state probabilities and frame labels
    summarize = SVAESLDS.summarize_evaluation
    monkeypatch.setattr(SVAESLDS, "summarize_evaluation", lambda self, per_example, metrics: (
        seen.append(per_example), summarize(self, per_example, metrics))[1])
    results = jobs.evaluate(path, progress=False)
    assert {"elbo", "iw_nll", "state_ari", "state_nmi", "state_accuracy", "pred_mse", "pred_mse_repeat_last",
            "transition_matrix", "state_usage"} <= results.keys()
    [per_example] = seen
    labels, states = per_example["frame_labels"].flatten(), per_example["state_probs"].argmax(-1).flatten()
    real = labels >= 0
    assert results["num_examples"] == 3 and per_example["state_probs"].shape[::2] == (3, 3) and int(real.sum()) > 0
    # recomputed here from the returned probabilities and labels, by counting pairs, over the labelled frames
    assert results["state_ari"] == pytest.approx(pair_counting_ari(labels[real].tolist(), states[real].tolist()),
                                                 abs=1e-9)
    share = [states[real].tolist().count(k) / int(real.sum()) for k in range(3)]
    assert results["state_usage"] == pytest.approx(share, abs=1e-4)  # rounded to 4 places
    transitions = torch.tensor(results["transition_matrix"])
    assert transitions.shape == (3, 3) and torch.allclose(transitions.sum(1), torch.ones(3), atol=2e-4)
    assert json.loads((run_dir / "test_metrics.json").read_text())["state_ari"] == results["state_ari"]
    assert "val/segmentation_0" in event_tags(run_dir, "val")["images"]
    assert "test/segmentation_0" in event_tags(run_dir, "test")["images"]
    assert (run_dir / "figures" / "test_segmentation_0.png").is_file()


def test_prediction_samples_futures_from_the_switching_dynamics():
    """With the decoder made the identity, nearly noise-free dynamics (Q = 1e-6 I), rotations by different angles
    per state and a chain that never switches, every sampled future rolls its last prefix state forward by one
    state's rotation, with the states drawn by q(z) at the prefix's end; the prediction averages the futures."""
    torch.manual_seed(0)
    model = SVAESLDS(data_shape=(8, 2), num_train=8, num_states=2, latent_dim=2, hidden_dims=[8], prefix_len=4,
                     horizon=4, prediction_samples=200).eval()
    model.decode = lambda x: torch.cat([x, torch.zeros_like(x)], -1)  # decoded mean = x
    pgm = model.pgm
    angles = torch.tensor([0.3, 1.2], dtype=DT)
    rotations = torch.stack([torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
                             for a in angles])
    eye = torch.eye(2, dtype=DT).expand(2, 2, 2)
    natural = mniw.standard_to_natural(rotations, eye, 1e-2 * eye, torch.full((2,), 1e4, dtype=DT))  # Q = 1e-6 I
    pgm.set_natural("mniw", natural)
    pgm.set_natural("transitions", 1e8 * torch.eye(2, dtype=DT))
    with torch.no_grad():
        model.encoder.net.net[-1].bias.copy_(torch.tensor([1.0, -1.0, 5.0, 5.0]))  # x near (1, -1), precise
        y = torch.randn(3, 8, 2)
        mean, paths = model.predict(y, 200)
    assert mean.shape == (3, 8, 2) and paths.shape == (200, 3, 8, 2)
    start = paths[:, :, 3].double()  # x at the prefix's last frame, per sampled path
    futures = paths[:, :, 4:].double()
    rolled = torch.stack([torch.stack([start @ torch.linalg.matrix_power(R, h + 1).mT for h in range(4)], 2)
                          for R in rotations])  # (K, S, B, H, 2)
    error = (rolled - futures).abs().amax((-2, -1))  # (K, S, B)
    assert (error.min(0).values < 2e-2).all() and (error.max(0).values > 0.1).all()
    chosen = error.argmin(0)
    post = model.infer(y[:, :4], model.expected_globals().potentials, 0)
    share = (chosen == 1).double().mean(0)
    assert torch.allclose(share, post.states.marginals[:, -1, 1], atol=0.12)
    assert torch.allclose(mean[:, 4:], paths[:, :, 4:].mean(0), atol=1e-5)


def test_mean_field_starts_from_each_states_own_fit():
    """Precise observations of a path that rotates by state 1's angle for 10 steps, then by state 0's: the
    first q(z) (`initial_state_weights`) already picks the right state at almost every step."""
    from model.expfam.niw import standard_to_natural as niw_natural
    from model.svae.graphical_model import MNIW, NIW
    from model.svae.kalman import expected_lds_potentials
    from model.svae.slds_inference import SwitchingPotentials, initial_state_weights

    angles = torch.tensor([0.2, 0.9], dtype=DT)
    rotations = torch.stack([torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
                             for a in angles])
    eye = torch.eye(2, dtype=DT)
    eyes = eye.expand(2, 2, 2)
    dynamics = MNIW.expected_stats(mniw.standard_to_natural(rotations, eyes, 0.1 * eyes, torch.full((2,), 100.0,
                                                                                                 dtype=DT)))
    init = NIW.expected_stats(niw_natural(torch.zeros(2, dtype=DT), torch.tensor(1.0, dtype=DT), 3 * eye,
                                          torch.tensor(3.0, dtype=DT)))
    log_trans = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=DT))
    potentials = SwitchingPotentials(torch.log(torch.tensor([0.5, 0.5], dtype=DT)), log_trans,
                                     expected_lds_potentials(init, dynamics))
    x = [torch.tensor([1.0, 0.0], dtype=DT)]
    truth = [1] * 10 + [0] * 9
    for k in truth:
        x.append(rotations[k] @ x[-1])
    x = torch.stack(x)[None]  # (1, 20, 2)
    node_J = torch.full_like(x, 100.0)  # precise; at 1-10 (loose against Q = 1e-3) this start fails
    weights, retries = initial_state_weights(potentials, node_J, node_J * x)
    agree = (weights[0].argmax(-1) == torch.tensor(truth)).double().mean()
    assert float(agree) >= 0.9 and int(retries) == 0


def test_a_checkpoint_from_before_the_usage_average_loads_with_uniform_usage():
    model = tiny_model()
    state = {k: v for k, v in model.state_dict().items() if k != "pgm.usage"}
    model.pgm.usage.fill_(0.0)
    model.load_state_dict(state)
    assert torch.equal(model.pgm.usage, torch.full((3,), 1 / 3, dtype=DT))
