"""GraphVAE and GraphLSTMVAE: gates, the factorised prior without edges, fusion and KL against closed forms
and Monte Carlo, the stacked heads against per-node networks, iw_nll <= -elbo, fixed gates in phase 2,
resume of the temperature schedule, and the architectures end to end (test.py, TensorBoard)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as td

from model.diagonal_gaussian import gaussian_kl, precision_weighted_fusion
from model.graph.gates import EdgeGates
from model.graph.graph_vae import GraphLSTMVAE, GraphVAE
from model.networks import StackedMLP
from tests.conftest import ROOT, event_tags, final_state, train_halfway_and_resume
from trainer import jobs
from trainer.components import load_and_check
from trainer.jobs import train
from utils.config import read_config_file

SHAPE = (1, 28, 28)


def tiny(cls=GraphVAE, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_nodes", 4)
    kwargs.setdefault("node_dim", 3)
    return cls(SHAPE, hidden_dims=[32, 16], head_hidden_dims=[8], **kwargs)


def binary_images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


@pytest.mark.parametrize("shape", [(), (7,)])
def test_relaxed_gates_stay_finite_and_inside_the_unit_interval(shape):
    gates = EdgeGates(5)
    with torch.no_grad():
        gates.logits.copy_(torch.tensor([1e4, -1e4, 0.0, 50.0, -50.0]).repeat(5, 1))
    for straight_through in (False, True):
        c = gates.relaxed(shape, tau=0.01, straight_through=straight_through)
        assert c.shape == (*shape, 5, 5) and torch.isfinite(c).all()
        allowed = c[..., gates.mask.bool()]
        assert (c[..., ~gates.mask.bool()] == 0).all()
        if straight_through:
            assert ((allowed == 0) | (allowed == 1)).all()
        else:
            assert ((allowed > 0) & (allowed < 1)).all()
    c = gates.relaxed(shape, tau=0.01)
    c.sum().backward()
    assert torch.isfinite(gates.logits.grad).all()


def test_relaxed_gates_follow_the_edge_probabilities():
    gates = EdgeGates(3, init_logit=1.0)
    c = gates.relaxed((20000,), tau=0.3)
    frequency = (c > 0.5).float().mean(0)
    torch.testing.assert_close(frequency[gates.mask.bool()], torch.full((3,), torch.sigmoid(torch.tensor(1.0)).item()),
                               atol=0.02, rtol=0)


@pytest.mark.parametrize("cls", [GraphVAE, GraphLSTMVAE])
def test_with_all_gates_closed_the_prior_gets_no_parents(cls, monkeypatch):
    model = tiny(cls, gate_init_logit=-20.0).eval()
    seen = []
    original = cls.prior_step

    def recording(self, n, parents, state):
        seen.append(parents.detach().clone())
        return original(self, n, parents, state)

    monkeypatch.setattr(cls, "prior_step", recording)
    model.top_down_pass(model.encoder(binary_images().flatten(1)), model.gates.hard())
    model.sample(5)
    assert len(seen) == 2 * (model.num_nodes - 1) and all((p == 0).all() for p in seen)
    # GraphVAE: every non-root prior is then the same constant Gaussian for any z
    if cls is GraphVAE:
        zeros = torch.zeros(2, (model.num_nodes - 2) * model.node_dim)
        mean, log_var, _ = original(model, 1, zeros, None)
        # equal up to rounding: CPU kernels may sum two identical rows in different orders (torch 2.4)
        torch.testing.assert_close(mean[0], mean[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(log_var[0], log_var[1], rtol=0, atol=1e-6)


def test_without_gated_inputs_the_lstm_reads_every_earlier_node(monkeypatch):
    """gated_inputs: false: node n's LSTM input is z_{n+1}, ..., z_{N-1} unscaled (the mask, not the gates),
    so the top-down pass and the samples do not change with the gates; with gated inputs they do."""
    ungated, gated = tiny(GraphLSTMVAE, gated_inputs=False).eval(), tiny(GraphLSTMVAE).eval()  # same weights
    h = ungated.encoder(binary_images().flatten(1))
    mask = ungated.gates.mask
    closed = torch.zeros_like(mask)
    partly_open = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)) * mask

    def top_down(model, gates):
        torch.manual_seed(4)  # the same noise for every pass
        return model.top_down_pass(h, gates)

    seen = []
    original = GraphLSTMVAE.prior_step

    def recording(self, n, parents, state):
        seen.append((n, parents.detach().clone()))
        return original(self, n, parents, state)

    monkeypatch.setattr(GraphLSTMVAE, "prior_step", recording)
    reference = top_down(ungated, closed)
    N = ungated.num_nodes
    assert [n for n, _ in seen] == list(range(N - 2, -1, -1))
    for n, parents in seen:  # node n reads every earlier-sampled node, whatever the (closed) gates say
        torch.testing.assert_close(parents, reference.z[:, n + 1:].flatten(1), rtol=0, atol=0)
    monkeypatch.setattr(GraphLSTMVAE, "prior_step", original)

    for gates in (partly_open, mask):
        again = top_down(ungated, gates)
        assert torch.equal(again.z, reference.z) and torch.equal(again.kl, reference.kl)
    torch.testing.assert_close(top_down(gated, mask).z, reference.z)  # all gates open: the same inputs
    for gates in (closed, partly_open):
        assert not torch.allclose(top_down(gated, gates).z, reference.z)

    def samples(model, logit):
        with torch.no_grad():
            model.gates.logits.copy_(logit * mask)
        torch.manual_seed(6)
        return model.sample(3)

    assert torch.equal(samples(ungated, -20.0), samples(ungated, 20.0))
    assert not torch.allclose(samples(gated, -20.0), samples(gated, 20.0))


def test_fusion_is_the_normalised_product_of_the_two_gaussians():
    gen = torch.Generator().manual_seed(1)
    mean_a, mean_b = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    prec_a, prec_b = torch.rand(2, 6, generator=gen, dtype=torch.float64) * 3 + 0.1
    mean, precision = precision_weighted_fusion(mean_a, prec_a, mean_b, prec_b)
    z = torch.randn(5, 6, generator=gen, dtype=torch.float64)

    def log_density(m, p):
        return td.Normal(m, p.rsqrt()).log_prob(z)

    gap = log_density(mean_a, prec_a) + log_density(mean_b, prec_b) - log_density(mean, precision)
    torch.testing.assert_close(gap, gap[:1].expand_as(gap))  # the product / N(mean, 1/precision) is constant in z


def test_analytic_kl_matches_torch_and_monte_carlo():
    gen = torch.Generator().manual_seed(2)
    mq, mp = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    lq, lp = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    q, p = td.Normal(mq, (0.5 * lq).exp()), td.Normal(mp, (0.5 * lp).exp())
    kl = gaussian_kl(mq, lq, mp, lp)
    torch.testing.assert_close(kl, td.kl_divergence(q, p).sum(-1))
    z = q.sample((200000,))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    assert abs(float(log_ratio.mean() - kl)) < 4 * float(log_ratio.std()) / math.sqrt(len(z))


def test_stacked_heads_equal_separate_networks():
    heads = StackedMLP(4, 6, [5], 3, activation="elu")
    x = torch.randn(7, 6)
    together = heads(x, shared_input=True)
    for n in range(4):
        w0, b0, w1, b1 = heads.weights[0][n], heads.biases[0][n], heads.weights[1][n], heads.biases[1][n]
        alone = torch.nn.functional.elu(x @ w0 + b0) @ w1 + b1
        torch.testing.assert_close(together[:, n], alone)
        torch.testing.assert_close(heads.node(n, x), alone)
        torch.testing.assert_close(heads.node(n, x[:, 2:], skip_inputs=2), torch.nn.functional.elu(
            x[:, 2:] @ w0[2:] + b0) @ w1 + b1)


@pytest.mark.parametrize("cls,node_dim", [(GraphVAE, 3), (GraphLSTMVAE, 1), (GraphLSTMVAE, 5)])
def test_iw_nll_bounds_the_elbo(cls, node_dim):
    model = tiny(cls, node_dim=node_dim)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = binary_images(64)
    for _ in range(20):
        loss = model.train()({"x": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batch = {"x": x[:16]}
    torch.manual_seed(3)
    elbo = torch.stack([model.evaluate_batch(batch, ("elbo",), {"iw_samples": 1})["elbo"] for _ in range(30)]).mean(0)
    iw_nll = model.evaluate_batch(batch, ("iw_nll",), {"iw_samples": 300})["iw_nll"]
    assert float(iw_nll.mean()) <= float(-elbo.mean())


@pytest.mark.parametrize("gate_sampling", ["per_batch", "per_example"])
def test_forward_reports_per_node_kl_and_trains_every_parameter(gate_sampling):
    model = tiny(gate_sampling=gate_sampling, straight_through=gate_sampling == "per_example").train()
    out = model({"x": binary_images()})
    torch.testing.assert_close(out["kl"], sum(out[f"kl_node{n}"] for n in range(4)))
    torch.testing.assert_close(out["elbo"], out["recon"] - out["kl"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.gates.logits.grad is not None and model.gates.logits.grad[model.gates.mask.bool()].abs().sum() > 0


@pytest.fixture
def graph_config(tmp_path, mnist_root) -> dict:
    """configs/graph_vae.yaml shrunk to the tiny generated MNIST: 4 nodes of 3 dims, 2 epochs."""
    config = read_config_file(ROOT / "configs" / "graph_vae.yaml")
    config["arch"]["args"].update(num_nodes=4, node_dim=3, hidden_dims=[32, 16], head_hidden_dims=[8])
    config["data_loader"]["args"].update(root=str(mnist_root), download=False, batch_size=16,
                                         validation_split=12, num_workers=0)
    config["trainer"].update(epochs=2, save_dir=str(tmp_path / "saved"), verbosity=0, early_stop=0,
                             save_period=1, tensorboard=True, visualize_every=1, compile=False)  # tests/test_compile.py
    config["n_gpu"] = 0
    return config


@pytest.mark.integration
def test_resume_restores_the_temperature_schedule_and_evaluate(graph_config):
    run_dir, state = train_halfway_and_resume(graph_config, epochs=4)
    assert state["schedule"] == {"epochs_done": 4}
    path = run_dir / "checkpoints" / "last.pt"
    results = jobs.evaluate(path, iw_samples=20, progress=False)
    assert {"elbo", "iw_nll", "edge_probs", "adjacency", "kl_nodes"} <= results.keys()
    assert len(results["edge_probs"]) == 4 and all(len(row) == 4 for row in results["edge_probs"])
    assert results["adjacency"][0] == [0, 0, 0, 0]  # node 0 has no children: edges run m -> n with m > n
    assert results["iw_nll"] > 0 and json.loads((run_dir / "test_metrics.json").read_text())["iw_samples"] == 20

    assert {"val/edge_probs", "val/adjacency", "val/reconstructions", "val/samples"} <= \
        set(event_tags(run_dir, "val")["images"])
    assert "test/adjacency" in event_tags(run_dir, "test")["images"]
    assert {"epoch/kl_node0_per_image", "epoch/kl_node3_per_image"} <= set(event_tags(run_dir, "train")["scalars"])
    assert {"schedule/tau", "schedule/kl_weight"} <= set(event_tags(run_dir, ".")["scalars"])  # run level


def test_resumed_model_has_the_saved_temperature(graph_config):
    run = train(load_and_check(base=graph_config, overrides=["arch.args.tau_decay=0.5", "arch.args.tau_min=0.01"]))
    checkpoint = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    model = GraphVAE(SHAPE, num_nodes=4, node_dim=3, hidden_dims=[32, 16], head_hidden_dims=[8], tau_decay=0.5,
                     tau_min=0.01)
    model.load_schedule_state(checkpoint["schedule"])
    assert model.tau == 0.25


def test_phase_two_fixes_the_gates(graph_config):
    graph_config["arch"]["args"].update(fixed_gates_epoch=2, gate_init_logit=0.3)
    graph_config["optimizer"]["gates"]["args"]["lr"] = 0.5  # large, so any update would show
    after_phase_one = train(load_and_check(base=graph_config, overrides=["trainer.epochs=2"]))
    logits = final_state(after_phase_one.run_dir)["model"]["gates.logits"]
    assert not torch.equal(logits, torch.full_like(logits, 0.3).tril(-1))  # phase 1 moved them
    full = train(load_and_check(base=graph_config, overrides=["trainer.epochs=4"]))
    assert torch.equal(final_state(full.run_dir)["model"]["gates.logits"], logits)
    model = GraphVAE(SHAPE, num_nodes=4, node_dim=3, hidden_dims=[32, 16], head_hidden_dims=[8], fixed_gates_epoch=2)
    model.load_schedule_state({"epochs_done": 2})
    with torch.no_grad():
        model.gates.logits.copy_(logits)
    assert torch.equal(model.sample_gates(model.gates, 5), model.gates.hard())
