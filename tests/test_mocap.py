"""Motion capture (configs/mocap/, ../shared/data/mocap6/): the shipped configs load and build on a generated
stand-in in mocap6.npz's format, and on the real file when it is there; test.py reports the segmentation over
every frame of whole sequences and per sequence, with one figure per sequence; a missing file is one line;
the benchmark's Gaussian HMM recovers a known segmentation; and (slow) one seed of the shipped config beats
the Gaussian HMM on the real recordings."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.mocap import ar_hmm, baselines, decode, gaussian_hmm
from model.kmeans import kmeans
from model.metrics import adjusted_rand_index
from tests.conftest import ROOT, event_tags, one_line_error, run_cli
from tests.test_ar_hmm import STAY, TRUE_A, TRUE_Q_CHOL, sample_ar_hmm
from trainer import jobs
from trainer.components import build_data, build_model, eval_metric_names, load_and_check
from trainer.jobs import train

MOCAP = ROOT.parent / "shared" / "data" / "mocap6" / "mocap6.npz"
EXERCISES = ("JumpJack", "Jog", "Squat", "KneeRaise", "ArmCircle", "Twist", "SideReach", "Box", "UpDown",
             "ToeTouchOneHand", "SideBend", "ToeTouchTwoHands")
CONFIGS = ("svae_slds.yaml", "svae_slds.json", "svae_slds_heldout.yaml", "svae_lds.yaml")
STAND_IN_LENGTHS = (92, 76, 80, 110, 96, 84)  # windows of 50 every 10: 16 or more for a batch
TINY = ["arch.args.hidden_dims=[8]", "arch.args.max_iter=3", "arch.args.eval_samples=2", "trainer.epochs=2",
        "data_loader.args.window=12", "data_loader.args.stride=6", "data_loader.args.batch_size=4",
        "arch.args.prefix_len=6", "arch.args.horizon=4"]


def write_stand_in(path: Path, lengths: tuple[int, ...] = STAND_IN_LENGTHS, seed: int = 0) -> Path:
    """mocap6.npz's format (points (sum of L, 12) float32, lengths, 0-based labels, label_names, channel_names,
    sequence_names) with made-up recordings: segments of 8-16 frames, each an exercise whose 12 channels
    oscillate with the exercise's own frequencies, amplitudes and offsets, plus noise."""
    gen = np.random.default_rng(seed)
    frequency, amplitude, offset = (gen.uniform(0.1, 0.4, (12, 12)), gen.uniform(0.5, 3.0, (12, 12)),
                                    gen.normal(0.0, 2.0, (12, 12)))
    points, labels = [], []
    for length in lengths:
        t = 0
        while t < length:
            span, exercise = min(int(gen.integers(8, 17)), length - t), int(gen.integers(12))
            steps = np.arange(t, t + span)[:, None]
            points.append(offset[exercise] + amplitude[exercise] * np.sin(2 * np.pi * frequency[exercise] * steps)
                          + 0.1 * gen.normal(size=(span, 12)))
            labels += [exercise] * span
            t += span
    np.savez(path, points=np.concatenate(points).astype(np.float32), lengths=np.array(lengths),
             labels=np.array(labels), label_names=np.array(EXERCISES),
             channel_names=np.array([f"joint{c}.rx" for c in range(12)]),
             sequence_names=np.array([f"{13 + i // 3}_{i:02d}" for i in range(len(lengths))]))
    return path


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    return write_stand_in(tmp_path / "mocap6.npz")


SOURCES = ["stand-in", pytest.param("real", marks=pytest.mark.skipif(not MOCAP.is_file(), reason=f"no {MOCAP}"))]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load_and_build(name, source, stand_in):
    path = stand_in if source == "stand-in" else MOCAP
    config = load_and_check(ROOT / "configs" / "mocap" / name, [f"data_loader.args.path={path}"])
    data = build_data(config)
    model = build_model(config, data)
    assert data.data_shape[1] == 12 and data.label_names == EXERCISES and data.frame_rate == 10.0
    assert len(data.sequence_names) == 6
    if config["arch"]["type"] == "SVAE-SLDS":  # the figure's channel and sequence names, and its time axis
        assert (model.channel_names, model.sequence_names, model.frame_rate) == (data.channel_names,
                                                                                 data.sequence_names, 10.0)
    test_batch = data.test_set.__getitems__(list(range(len(data.test_set))))
    lengths = data.lengths[data.test_sequences]
    assert torch.equal(test_batch["mask"].sum(1), lengths)  # whole sequences: every frame once
    metrics = eval_metric_names(config, model, data)
    if name in ("svae_slds_heldout.yaml", "svae_lds.yaml"):  # sequence 2 held out, the same for both
        assert data.test_sequences.tolist() == [2] and 2 not in data.train_sequences.tolist()
        assert "iw_nll" in metrics
    else:  # the benchmark's protocol: train on all six, evaluate on all six
        assert data.test_sequences.tolist() == data.train_sequences.tolist() == list(range(6))
        assert {"state_ari", "state_nmi", "state_accuracy"} <= set(metrics)
    model.train()
    batch = data.train_set.__getitems__(list(range(config["data_loader"]["args"]["batch_size"])))
    assert torch.isfinite(model(batch)["loss"])


def test_the_json_config_is_the_yaml_config():
    yaml_config = load_and_check(ROOT / "configs" / "mocap" / "svae_slds.yaml")
    json_config = load_and_check(ROOT / "configs" / "mocap" / "svae_slds.json")
    assert yaml_config == json_config


@pytest.mark.integration
def test_segmentation_over_whole_sequences_per_sequence_and_figures(tmp_path, stand_in):
    config = load_and_check(ROOT / "configs" / "mocap" / "svae_slds.yaml",
                            [f"data_loader.args.path={stand_in}", f"trainer.save_dir={tmp_path / 'saved'}",
                             "trainer.verbosity=0", "trainer.tensorboard=true", *TINY])
    run = train(config)
    results = jobs.evaluate(run.run_dir / "checkpoints" / "last.pt", iw_samples=2, progress=False)
    assert results["num_examples"] == 6  # whole sequences, not windows
    per_sequence = results["per_sequence"]
    names = [f"{13 + i // 3}_{i:02d}" for i in range(6)]
    assert list(per_sequence) == names
    assert [per_sequence[n]["frames"] for n in names] == list(STAND_IN_LENGTHS)  # every labelled frame, once
    for key in ("state_ari", "state_nmi", "state_accuracy"):
        assert all(-1 <= per_sequence[n][key] <= 1 for n in names)
    # one matching of states to labels for the whole split: the per-sequence accuracies average to the total
    weighted = sum(per_sequence[n]["state_accuracy"] * per_sequence[n]["frames"] for n in names)
    assert weighted / sum(STAND_IN_LENGTHS) == pytest.approx(results["state_accuracy"], abs=1e-3)
    assert "per_sequence" in jobs.format_table(results)
    tags = event_tags(run.run_dir, "test")["images"]
    assert {f"test/segmentation_{i}" for i in range(6)} <= set(tags)
    for i in range(6):
        width, height = Image.open(run.run_dir / "figures" / f"test_segmentation_{i}.png").size
        assert width >= 480 and height >= 480


@pytest.mark.integration
def test_a_missing_data_file_is_one_line_saying_where_it_is_expected(tmp_path):
    missing = tmp_path / "elsewhere" / "mocap6.npz"
    result = run_cli("train.py", "-c", "configs/mocap/svae_slds.yaml", "--set", f"data_loader.args.path={missing}")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert str(missing) in line and "data_loader.args.path" in line
    relative = run_cli("train.py", "-c", "configs/mocap/svae_slds.yaml", "--set",
                       "data_loader.args.path=../nowhere/mocap6.npz", cwd=ROOT)
    assert f"expected at {(ROOT / '../nowhere/mocap6.npz').resolve()}" in one_line_error(relative.stderr)


def hmm_sequences(num: int = 4, length: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (num, length, 3) of a sticky 3-state HMM with well-separated Gaussian emissions, and the states."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.zeros(num, length, dtype=torch.long)
    states[:, 0] = torch.randint(3, (num,), generator=gen)
    for t in range(1, length):
        move = torch.rand(num, generator=gen) < 0.1
        states[:, t] = torch.where(move, torch.randint(3, (num,), generator=gen), states[:, t - 1])
    means = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)
    return means[states] + torch.randn(num, length, 3, generator=gen, dtype=torch.float64), states


def test_benchmark_gaussian_hmm_recovers_a_known_segmentation():
    frames, states = hmm_sequences()
    mask = torch.ones(states.shape, dtype=torch.bool)
    mask[1, 45:] = False  # padding leaves the real frames' posterior alone
    hmm = gaussian_hmm(frames, mask, 3, torch.Generator().manual_seed(0))
    found, nll = decode(hmm, frames, mask)
    assert adjusted_rand_index(states[mask], found[mask]) > 0.95 and hmm.iterations > 1
    true_nll = 1.5 * math.log(2 * math.pi) + 1.5  # 3 unit-variance dims; the states add < 0.5 nats per frame
    assert true_nll - 0.2 < nll < true_nll + 0.5, nll
    assignments, centres = kmeans(frames[mask], 3, torch.Generator().manual_seed(0))
    assert adjusted_rand_index(states[mask], assignments) > 0.8 and centres.shape == (3, 3)


def test_benchmark_ar_hmm_recovers_a_known_segmentation_and_scores_held_out_frames():
    """The AR(1)-HMM baseline on sequences of the 3-state AR-HMM of tests/test_ar_hmm.py: fitted on some
    sequences, it segments others and its held-out NLL per frame is near the true model's (computed here from
    the true dynamics with the forward algorithm of an independent dense sum over states)."""
    x, z = sample_ar_hmm(B=24, T=80, seed=1)
    mask = torch.ones(z.shape, dtype=torch.bool)
    hmm = ar_hmm(x[:16], mask[:16], 3, torch.Generator().manual_seed(0))
    found, nll = decode(hmm, x[16:], mask[16:])
    assert adjusted_rand_index(z[16:, :-1].flatten(), found[:, :-1].flatten()) > 0.85
    steps = torch.distributions.MultivariateNormal(torch.zeros(3, 2, dtype=torch.float64), scale_tril=TRUE_Q_CHOL)
    step_log_p = steps.log_prob(x[16:, 1:, None] - torch.einsum("kij,btj->btki", TRUE_A, x[16:, :-1]))
    true_log_z = true_ar_hmm_log_likelihood(step_log_p)  # the steps' log-density, states summed out
    true_nll = -float(true_log_z.sum() + hmm.node(x[16:], mask[16:])[1].sum()) / mask[16:].sum()
    assert true_nll - 0.05 < nll < true_nll + 0.15, (nll, true_nll)


def true_ar_hmm_log_likelihood(step_log_p: torch.Tensor) -> torch.Tensor:
    """log sum_z p(z) prod_t p_{z_t}(x_t+1 | x_t) under the true chain of tests/test_ar_hmm.py (uniform z_1,
    stay STAY), by a plain forward recursion in probability space rescaled per step: (B,)."""
    K = step_log_p.shape[-1]
    P = torch.full((K, K), (1 - STAY) / (K - 1), dtype=torch.float64).fill_diagonal_(STAY)
    log_z = torch.zeros(len(step_log_p), dtype=torch.float64)
    alpha = torch.full((len(step_log_p), K), 1.0 / K, dtype=torch.float64)
    for t in range(step_log_p.shape[1]):
        shift = step_log_p[:, t].max(-1, keepdim=True).values
        alpha = alpha * (step_log_p[:, t] - shift).exp()
        total = alpha.sum(-1, keepdim=True)
        log_z += (total.log() + shift).squeeze(-1)
        alpha = (alpha / total) @ P
    return log_z


def test_benchmark_baselines_run_on_the_configs_data(stand_in):
    config = load_and_check(ROOT / "configs" / "mocap" / "svae_slds.yaml", [f"data_loader.args.path={stand_in}"])
    rows = baselines(config, [0])
    for method in ("k-means of the frames", "Gaussian HMM (EM)", "AR(1)-HMM (EM)"):
        (row,) = rows[method]
        assert 0 < row["state_ari"] <= 1 and 1 <= row["states_in_use"] <= 12
    assert all(math.isfinite(rows[method][0]["nll"]) for method in ("Gaussian HMM (EM)", "AR(1)-HMM (EM)"))


@pytest.mark.slow
@pytest.mark.skipif(not MOCAP.is_file(), reason=f"no {MOCAP}")
@pytest.mark.xfail(reason="open target: over 5 seeds SVAE-SLDS's state_ari is 0.443 +- 0.019 against the Gaussian "
                          "HMM's 0.449 +- 0.024 (docs/RESULTS.md, 'Motion capture'); seed 0 gives 0.425 against the "
                          "HMM's 0.444", strict=False)
def test_one_seed_of_the_shipped_config_beats_the_gaussian_hmm(tmp_path):
    config = load_and_check(ROOT / "configs" / "mocap" / "svae_slds.yaml",
                            [f"trainer.save_dir={tmp_path / 'saved'}", "trainer.verbosity=0"])
    run = train(config)
    results = jobs.evaluate(run.run_dir / "checkpoints" / "last.pt", progress=False)
    hmm = baselines(config, [0])["Gaussian HMM (EM)"][0]
    json.dumps(results)  # what test_metrics.json holds
    assert results["state_ari"] > hmm["state_ari"], (results["state_ari"], hmm["state_ari"])
    assert sum(share >= 0.01 for share in results["state_usage"]) >= 4
