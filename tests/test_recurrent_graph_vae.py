"""RecurrentGraphVAE: the batched pass against a plain per-sequence, per-node reference, masks and padding, no state
across sequences or batches, iw_nll <= -elbo, prediction, the stroke likelihood, and the model end to end (train
with validation and a last partial batch, exact resume, test.py, TensorBoard), on dots and on pen strokes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import distributions as td

from data_loader.dots import DotVideoDataLoader
from model.diagonal_gaussian import bounded_log_variance, gaussian_log_prob, precision_weighted_fusion
from model.graph.recurrent import FusedGaussianSample, RecurrentGraphVAE, fold_gates
from model.likelihoods import StrokeLikelihood
from tests.conftest import ROOT, event_tags, train_halfway_and_resume
from tests.test_strokes import make_drawings, save
from trainer import jobs
from trainer.components import load_and_check
from trainer.jobs import train
from utils.config import read_config_file

P = 5  # observed dims per step


def tiny(**kwargs) -> RecurrentGraphVAE:
    torch.manual_seed(0)
    args = dict(num_nodes=3, node_dim=2, state_dim=8, feature_dims=[6], encoder_dim=7, head_hidden_dims=[5, 4],
                decoder_hidden_dims=[6], prefix_len=4, horizon=3, prediction_samples=4)
    return RecurrentGraphVAE((10, P), **{**args, **kwargs}).double()


def random_gates(n: int, edges: str, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """Gates in (0, 1) with a few exact zeros, on the allowed edges."""
    gen = torch.Generator().manual_seed(seed)
    gates = torch.rand(*batch, n, n, generator=gen, dtype=torch.float64)
    gates = gates * (torch.rand(*batch, n, n, generator=gen, dtype=torch.float64) > 0.2)
    return gates.tril(-1) if edges == "lower" else gates


def reference_elbo(model: RecurrentGraphVAE, x: torch.Tensor, same: torch.Tensor, prev: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """The ELBO of one sequence x (T, P) computed step by step and node by node from the model's parameters,
    with each prior head's inputs concatenated explicitly: [s_{t-1}, g_{:,n} * z_{t-1}, c_{:,n} * z_t]."""
    N, d, h, E = model.num_nodes, model.node_dim, model.head_width, model.encoder_dim
    weight, bias = model.state_proj.weight, model.state_proj.bias
    state, z_prev, total = model.start_state(1), torch.zeros(N, d, dtype=x.dtype), 0.0
    for t in range(len(x)):
        s = model.hidden(state)[0]
        features = model.features(x[t])
        trunk = model.act(model.encoder_input(features) + weight[:E] @ s + bias[:E])
        bu_mean, bu_raw = model.bottom_up(trunk[None], shared_input=True)[0].chunk(2, -1)
        bu_log_var = bounded_log_variance(bu_raw)
        z = torch.zeros(N, d, dtype=x.dtype)
        kl = 0.0
        for n in reversed(range(N)):
            rows = slice(E + n * h, E + (n + 1) * h)
            first = torch.cat([weight[rows].T, model.prior_prev_weight[n], model.prior_same_weight[n]])
            inputs = torch.cat([s, (prev[:, n, None] * z_prev).flatten(), (same[:, n, None] * z).flatten()])
            out = model.prior_out.node(n, model.act(inputs @ first + bias[rows])[None])[0]
            mean_p, log_var_p = out[:d], bounded_log_variance(out[d:])
            mean_q, precision_q = precision_weighted_fusion(mean_p, torch.exp(-log_var_p), bu_mean[n],
                                                            torch.exp(-bu_log_var[n]))
            z[n] = mean_q + precision_q.rsqrt() * noise[t, n]
            kl = kl + td.kl_divergence(td.Normal(mean_q, precision_q.rsqrt()),
                                       td.Normal(mean_p, torch.exp(0.5 * log_var_p))).sum()
        log_px = model.likelihood.log_prob(model.decoder(torch.cat([z.flatten(), s])), x[t])
        total = total + log_px - kl
        state = model.rnn(torch.cat([features, z.flatten()])[None], state)
        z_prev = z
    return total


def elbo_per_sequence(model: RecurrentGraphVAE, x: torch.Tensor, mask: torch.Tensor, same: torch.Tensor,
                      prev: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    log_px, kl = model.step_terms(x, mask, model.filter(x, same, prev, noise))
    return (log_px - kl.sum(-1)).sum(1)


def test_fold_gates_applies_each_layer_to_its_gated_inputs():
    gen = torch.Generator().manual_seed(0)
    N, M, d, h = 3, 4, 2, 5
    weight = torch.randn(N, M * d, h, generator=gen, dtype=torch.float64)
    z = torch.randn(6, M, d, generator=gen, dtype=torch.float64)
    for gates in (torch.rand(M, N, generator=gen, dtype=torch.float64),
                  torch.rand(6, M, N, generator=gen, dtype=torch.float64)):
        folded = fold_gates(weight, gates)
        got = (z.flatten(1).unsqueeze(1) @ folded).squeeze(1) if gates.dim() == 3 else z.flatten(1) @ folded
        per_row = gates if gates.dim() == 3 else gates.expand(6, M, N)
        expected = torch.cat([(per_row[:, :, n, None] * z).flatten(1) @ weight[n] for n in range(N)], -1)
        torch.testing.assert_close(got, expected)


def test_fused_gaussian_sample_and_its_backward_pass():
    gen = torch.Generator().manual_seed(0)
    head, mean_bu, noise = (torch.randn(6, k, generator=gen, dtype=torch.float64) for k in (8, 4, 4))
    head = (3 * head).requires_grad_()  # raw log-variances well into tanh's bend
    precision_bu = torch.rand(6, 4, generator=gen, dtype=torch.float64).add(0.1).requires_grad_()
    weighted = (mean_bu * precision_bu).detach().requires_grad_()
    inputs = (head, weighted, precision_bu, noise)
    torch.autograd.gradcheck(FusedGaussianSample.apply, inputs)
    # against plain autograd through precision_weighted_fusion
    mean_p, raw = head.chunk(2, -1)
    mean, precision = precision_weighted_fusion(mean_p, torch.exp(-bounded_log_variance(raw)),
                                                weighted / precision_bu, precision_bu)
    expected = (mean + precision.rsqrt() * noise, mean, precision)
    got = FusedGaussianSample.apply(*inputs)
    weights = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, outs)), (head, weighted, precision_bu))
             for outs in (got, expected)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    # zero bottom-up precision samples the prior itself
    zeros = torch.zeros(6, 4, dtype=torch.float64)
    z, mean, precision = FusedGaussianSample.apply(head, zeros, zeros, noise)
    torch.testing.assert_close(mean, mean_p)
    torch.testing.assert_close(z, mean_p + torch.exp(0.5 * bounded_log_variance(raw)) * noise)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("per_example", [False, True])
def test_batched_pass_equals_the_per_sequence_reference(cell, per_example):
    model = tiny(cell=cell)
    R, T, N, d = 3, 6, 3, 2
    x = torch.randn(R, T, P, dtype=torch.float64)
    noise = torch.randn(R, T, N, d, dtype=torch.float64)
    batch = (R,) if per_example else ()
    same, prev = random_gates(N, "lower", 1, batch), random_gates(N, "all", 2, batch)
    got = elbo_per_sequence(model, x, torch.ones(R, T, dtype=torch.bool), same, prev, noise)
    for r in range(R):
        row_same, row_prev = (same[r], prev[r]) if per_example else (same, prev)
        torch.testing.assert_close(got[r], reference_elbo(model, x[r], row_same, row_prev, noise[r]))


def test_log_densities_of_the_trajectory():
    model = tiny()
    x = torch.randn(2, 5, P, dtype=torch.float64)
    traj = model.filter(x, *model.hard_gates())
    z = traj.z.view_as(traj.post_mean)
    log_var_q = -torch.log(traj.post_precision)
    torch.testing.assert_close(traj.log_posterior(), gaussian_log_prob(z, traj.post_mean, log_var_q).sum(-1))
    expected = td.Normal(traj.prior_mean, torch.exp(0.5 * traj.prior_log_var)).log_prob(z).sum((-2, -1))
    torch.testing.assert_close(traj.log_prior(), expected)


def test_padding_changes_nothing():
    """A sequence's ELBO is the same padded with garbage in a longer batch as alone and unpadded."""
    model = tiny()
    R, T, N, d = 3, 8, 3, 2
    x = torch.randn(R, T, P, dtype=torch.float64)
    lengths = torch.tensor([5, 8, 2])
    mask = torch.arange(T) < lengths[:, None]
    noise = torch.randn(R, T, N, d, dtype=torch.float64)
    gates = model.hard_gates()
    padded = torch.where(mask[..., None], x, 1e3 * torch.randn_like(x))
    batched = elbo_per_sequence(model, padded, mask, *gates, noise)
    torch.testing.assert_close(batched, elbo_per_sequence(model, torch.where(mask[..., None], x, 0.0), mask, *gates,
                                                          noise))
    for r in range(R):
        L = int(lengths[r])
        alone = elbo_per_sequence(model, x[r:r + 1, :L], mask[r:r + 1, :L], *gates, noise[r:r + 1, :L])
        torch.testing.assert_close(batched[r], alone[0])
    model.eval()
    out = model.evaluate_batch({"x": padded, "mask": mask}, ("elbo",), {"iw_samples": 1})
    assert torch.equal(out["steps"], lengths.double()) and torch.isfinite(out["elbo"]).all()


def test_no_state_is_carried_across_sequences_or_batches():
    model = tiny()
    x = torch.randn(4, 7, P, dtype=torch.float64)
    noise = torch.randn(4, 7, 3, 2, dtype=torch.float64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    gates = model.hard_gates()
    first = elbo_per_sequence(model, x, mask, *gates, noise)
    other = x.clone()
    other[1:] = torch.randn(3, 7, P, dtype=torch.float64)  # other sequences beside sequence 0
    torch.testing.assert_close(elbo_per_sequence(model, other, mask, *gates, noise)[0], first[0])
    # a batch's result does not depend on what ran before it
    model.train()
    torch.manual_seed(5)
    before = model({"x": x})["loss"]
    model({"x": torch.randn(2, 3, P, dtype=torch.float64)})
    torch.manual_seed(5)
    assert torch.equal(model({"x": x})["loss"], before)


def test_objective_parts_gradients_and_gate_sets():
    model = tiny()
    assert model.gates.mask.sum() == 3 and model.prev_gates.mask.sum() == 9  # strictly lower / all pairs
    out = model({"x": torch.randn(4, 6, P, dtype=torch.float64)})
    torch.testing.assert_close(out["elbo"], out["recon"] - out["kl"])
    torch.testing.assert_close(out["elbo_per_sequence"], out["elbo"] * 6)
    torch.testing.assert_close(sum(out[f"kl_node{n}"] for n in range(3)), out["kl"])
    out["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    groups = model.parameter_groups()
    assert [p.shape for p in groups["gates"]] == [(3, 3), (3, 3)]
    assert len(groups["gates"]) + len(groups["networks"]) == len(list(model.parameters()))


def test_fixed_gates_phase_freezes_both_gate_sets():
    model = tiny(fixed_gates_epoch=2)
    model.set_epochs_done(2)
    assert torch.equal(model.sample_gates(model.prev_gates, 4), model.prev_gates.hard())
    model({"x": torch.randn(4, 6, P, dtype=torch.float64)})["loss"].backward()
    assert model.gates.logits.grad is None and model.prev_gates.logits.grad is None


def test_iw_nll_is_below_the_negative_elbo_and_tightens_with_k():
    model = tiny()
    model.eval()
    x = torch.randn(6, 8, P, dtype=torch.float64)
    mask = torch.arange(8) < torch.tensor([8, 5, 8, 3, 8, 6])[:, None]
    torch.manual_seed(0)
    batch = {"x": x, "mask": mask}
    elbo = torch.stack([model.evaluate_batch(batch, ("elbo",), {"iw_samples": 1})["elbo"] for _ in range(50)]).mean(0)
    iw_1 = -model.iw_log_likelihood(x, mask, 1)
    iw_200 = -model.iw_log_likelihood(x, mask, 200)
    assert (iw_200 <= -elbo).all()
    assert iw_200.mean() < iw_1.mean()


def test_prediction_sees_only_the_prefix_and_scores_match():
    model = tiny()
    model.eval()
    x = torch.randn(3, 10, P, dtype=torch.float64)
    clean = x + 0.1
    changed = x.clone()
    changed[:, 4:] = 7.0  # after the prefix of 4
    torch.manual_seed(1)
    a = model.predict(x, 4)
    torch.manual_seed(1)
    assert torch.equal(model.predict(changed, 4), a) and a.shape == (4, 3, 7, P)
    torch.manual_seed(2)
    metrics = ("pred_mse", "pred_mse_repeat_last")
    out = model.evaluate_batch({"x": x, "clean": clean}, metrics, {"iw_samples": 1})
    torch.manual_seed(2)
    continued = model.predict(x, 4)[:, :, 4:]
    expected = ((continued - clean[:, 4:7]) ** 2).mean((0, 2, 3))
    torch.testing.assert_close(out["pred_se"], expected)
    torch.testing.assert_close(out["pred_mean_se"], ((continued.mean(0) - clean[:, 4:7]) ** 2).mean((1, 2)))
    torch.testing.assert_close(out["repeat_se"], ((x[:, 3:4] - clean[:, 4:7]) ** 2).mean((1, 2)))
    results = model.summarize_evaluation(out, metrics)
    assert results["predicted_sequences"] == 3
    assert results["pred_mse_per_sample"] == pytest.approx(float(expected.mean()))
    predictive_mean = ((continued.mean(0) - clean[:, 4:7]) ** 2).mean((1, 2))
    assert results["pred_mse"] == pytest.approx(float(predictive_mean.mean()))


def test_stroke_likelihood_is_bernoulli_pen_lift_and_gaussian_offsets():
    params = torch.randn(4, 7, 5, dtype=torch.float64)
    x = torch.cat([torch.randint(0, 2, (4, 7, 1)).double(), torch.randn(4, 7, 2, dtype=torch.float64)], -1)
    log_var = bounded_log_variance(params[..., 3:])
    expected = (td.Bernoulli(logits=params[..., 0]).log_prob(x[..., 0])
                + td.Normal(params[..., 1:3], torch.exp(0.5 * log_var)).log_prob(x[..., 1:]).sum(-1))
    torch.testing.assert_close(StrokeLikelihood.log_prob(params, x), expected)
    assert StrokeLikelihood.param_dim(3) == 5
    mean = StrokeLikelihood.mean(params)
    torch.testing.assert_close(mean, torch.cat([torch.sigmoid(params[..., :1]), params[..., 1:3]], -1))
    sample = StrokeLikelihood.sample(params)
    assert set(sample[..., 0].unique().tolist()) <= {0.0, 1.0}


def test_dot_sequences_of_variable_length():
    data = DotVideoDataLoader(mode="sequences", chunk_len=12, min_len=5, num_sequences=40, num_test_sequences=10)
    mask, x = data.train_set.tensors["mask"], data.train_set.tensors["x"]
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(12) < lengths[:, None])
    assert lengths.min() >= 5 and lengths.max() <= 12 and len(lengths.unique()) > 3
    assert (x[~mask] == 0).all() and (data.train_set.tensors["clean"][~mask] == 0).all()
    full = DotVideoDataLoader(mode="sequences", chunk_len=12, num_sequences=40, num_test_sequences=10)
    assert "mask" not in full.train_set.tensors
    assert torch.equal(full.train_set.tensors["x"][mask], x[mask])


# ---------------------------------------------------------------- end to end
@pytest.fixture
def recurrent_config(tmp_path) -> dict:
    """The shipped config shrunk: 45 training sequences in batches of 10 (a last batch of 5), validation."""
    config = read_config_file(ROOT / "configs" / "recurrent_graph_vae.yaml")
    config["arch"]["args"].update(num_nodes=3, node_dim=2, state_dim=8, feature_dims=[8], encoder_dim=8,
                                  head_hidden_dims=[8], decoder_hidden_dims=[8], prefix_len=5, horizon=4,
                                  prediction_samples=2, tau_decay=0.5, fixed_gates_epoch=3)
    config["data_loader"]["args"].update(chunk_len=10, num_sequences=55, num_test_sequences=12, validation_split=10,
                                         batch_size=10, min_len=9)
    config["trainer"].update(epochs=4, save_dir=str(tmp_path / "saved"), save_period=1, keep_last=0, verbosity=0,
                             tensorboard=False, log_every=1, visualize_every=0)
    return config


@pytest.mark.integration
def test_train_resume_and_evaluate(recurrent_config):
    recurrent_config["trainer"]["epochs"] = 2
    run_dir, state = train_halfway_and_resume(recurrent_config, epochs=4)
    assert state["schedule"]["epochs_done"] == 4
    results = jobs.evaluate(run_dir / "checkpoints" / "last.pt", iw_samples=20, progress=False)
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    for key in ("elbo", "elbo_per_sequence", "iw_nll", "iw_nll_per_sequence", "kl_nodes", "edge_probs", "adjacency",
                "prev_edge_probs", "prev_adjacency", "pred_mse", "pred_mse_per_sample", "pred_mse_repeat_last"):
        assert key in saved, key
    assert results["iw_nll"] <= -results["elbo"] + 1.0  # different samples; the IW bound is the tighter one
    assert len(saved["adjacency"]) == 3 and len(saved["prev_adjacency"][0]) == 3
    assert saved["num_examples"] == 12 and saved["num_steps"] <= 120

    recurrent_config["trainer"].update(tensorboard=True, epochs=1, visualize_every=1)
    run = train(load_and_check(base=recurrent_config))
    jobs.evaluate(run.run_dir / "checkpoints" / "last.pt", iw_samples=2, progress=False)
    val, test = event_tags(run.run_dir, "val")["images"], event_tags(run.run_dir, "test")["images"]
    for kind in ("same_step", "previous_step"):
        assert {f"val/{kind}/edge_probs", f"val/{kind}/adjacency"} <= set(val) and f"test/{kind}/adjacency" in test
    assert {"epoch/kl_node0_per_frame", "epoch/kl_node2_per_frame"} <= set(event_tags(run.run_dir, "train")["scalars"])
    assert {"val/sequences_0", "val/sequences_2"} <= set(val)


def test_pen_strokes_end_to_end(tmp_path, recurrent_config):
    path = save(tmp_path / "strokes.npy", make_drawings())
    recurrent_config["arch"]["args"].update(likelihood="stroke", prefix_len=4, horizon=3)
    recurrent_config["data_loader"] = {"type": "PenStrokes", "args": {
        "path": path, "window_len": 8, "min_window_len": 3, "test_fraction": 0.25, "batch_size": 6,
        "validation_split": 4}}
    recurrent_config["metrics"] = ["elbo", "iw_nll"]
    recurrent_config["trainer"].update(epochs=1, tensorboard=True)
    run = train(load_and_check(base=recurrent_config))
    results = jobs.evaluate(run.run_dir / "checkpoints" / "last.pt", iw_samples=3, progress=False)
    assert np.isfinite(results["elbo"]) and np.isfinite(results["iw_nll"])
    assert results["num_steps"] < 8 * results["num_examples"]  # padded windows are masked


def test_dot_direction_flips():
    args = dict(mode="sequences", chunk_len=9, num_sequences=6, num_test_sequences=2)
    never = DotVideoDataLoader(**args).train_set.tensors["clean"]
    assert torch.equal(DotVideoDataLoader(**args, flip_prob=0.0).train_set.tensors["clean"], never)
    always = DotVideoDataLoader(**args, flip_prob=1.0).train_set.tensors["clean"]  # back and forth every frame
    assert torch.equal(always[:, 0], never[:, 0]) and not torch.allclose(always[:, 1], always[:, 0])
    torch.testing.assert_close(always[:, 2::2], always[:, :1].expand_as(always[:, 2::2]))
    torch.testing.assert_close(always[:, 1::2], always[:, 1:2].expand_as(always[:, 1::2]))
