"""benchmarks/: what bench.py reports (ratios at the same batch size, min and max beside each median,
rotating rounds, full batches only), the bench configs that mirror the shipped GraphVAE and
GraphLSTMVAE, and what kalman.py's tables compute from the medians. No timing is asserted."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench, kalman
from benchmarks.common import build_trainer, load_bench_config
from tests.conftest import ROOT
from utils.config import read_config_file
from utils.errors import UserError


def fake_worker(label: str, batch_size: int, seconds: list[float], examples: int | None = None) -> SimpleNamespace:
    """What summarize reads from a bench.Worker, without a process behind it."""
    info = {"batch_size": batch_size, "threads": 1, "peak_mem_mb": 1000.0, "base_mem_mb": 900.0, "warmup_s": 2.0,
            "examples": examples if examples is not None else 10 * batch_size}
    return SimpleNamespace(entry=SimpleNamespace(label=label, path=f"{label}.json"), info=info, seconds=seconds)


def two_batch_sizes() -> list[SimpleNamespace]:
    """Config-major order (vae at 128 and 1024, then graph at 128 and 1024), as a user may list them."""
    return [fake_worker("vae@bs128", 128, [1.0, 1.2, 0.8]),
            fake_worker("vae@bs1024", 1024, [6.0, 7.0, 5.0]),
            fake_worker("graph@bs128", 128, [1.5, 1.8, 1.2]),
            fake_worker("graph@bs1024", 1024, [9.0, 10.0, 8.0])]


def test_ratio_is_to_the_first_config_at_the_same_batch_size():
    rows = {row["config"]: row for row in bench.summarize(two_batch_sizes(), "cpu", 10, 3, 1)}
    assert rows["vae@bs128"]["baseline"] == "vae@bs128" and rows["vae@bs128"]["ratio_to_baseline"] == 1.0
    assert rows["vae@bs1024"]["baseline"] == "vae@bs1024" and rows["vae@bs1024"]["ratio_to_baseline"] == 1.0
    assert rows["graph@bs128"]["baseline"] == "vae@bs128"
    assert rows["graph@bs128"]["ratio_to_baseline"] == pytest.approx(1.5 / 1.0)
    assert rows["graph@bs1024"]["baseline"] == "vae@bs1024"
    assert rows["graph@bs1024"]["ratio_to_baseline"] == pytest.approx(9.0 / 6.0)
    assert "ratio_to_first" not in rows["graph@bs1024"]


def test_entries_are_grouped_by_batch_size():
    entries = bench.make_entries([str(ROOT / "configs/bench/vae_mnist.json"),
                                  str(ROOT / "configs/bench/graph_vae_mnist.json")], [128, 1024], [], 5)
    assert [e.label for e in entries] == ["vae_mnist@bs128", "graph_vae_mnist@bs128",
                                          "vae_mnist@bs1024", "graph_vae_mnist@bs1024"]


def test_compile_adds_a_compiled_twin_after_each_eager_entry():
    entries = bench.make_entries([str(ROOT / "configs/bench/vae_mnist.json")], [128, 1024], [], 5, compile_too=True)
    assert [e.label for e in entries] == ["vae_mnist@bs128", "vae_mnist+compile@bs128",
                                          "vae_mnist@bs1024", "vae_mnist+compile@bs1024"]
    assert [e.config["trainer"]["compile"] for e in entries] == [False, True, False, True]


def test_min_and_max_rounds_are_in_the_rows_and_the_table(capsys):
    rows = bench.summarize(two_batch_sizes(), "cpu", 10, 3, 1)
    graph = rows[2]  # rounds of 1.5, 1.8 and 1.2 s for 10 steps of 128 examples
    assert graph["steps_per_s"] == pytest.approx(10 / 1.5)
    assert graph["steps_per_s_min"] == pytest.approx(10 / 1.8) and graph["steps_per_s_max"] == pytest.approx(10 / 1.2)
    assert graph["examples_per_s_min"] == pytest.approx(1280 / 1.8)
    assert graph["examples_per_s_max"] == pytest.approx(1280 / 1.2)
    bench.print_table(rows)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("graph@bs128"))
    assert f"{10 / 1.8:.2f}-{10 / 1.2:.2f}" in line  # steps/s of the slowest and the fastest round
    assert f"{1280 / 1.8:.0f}-{1280 / 1.2:.0f}" in line  # examples/s likewise
    assert "min-max" in out
    assert "batch 128: vae@bs128" in out and "batch 1024: vae@bs1024" in out


def test_rounds_rotate_the_starting_entry():
    order: list[str] = []

    def worker(label: str) -> SimpleNamespace:
        return SimpleNamespace(run_round=lambda: order.append(label))

    bench.run_rounds([worker("a"), worker("b"), worker("c")], repeats=4)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]


def test_benchmarked_steps_are_full_batches():
    """100 examples at batch 64 (the SVAE-LDS video's 100 chunks): every step takes 64, none 36."""
    config = load_bench_config(str(ROOT / "configs/bench/vae_mnist.json"),
                               ["data_loader.args.num_examples=100", "data_loader.args.data_shape=[8]",
                                "arch.args.hidden_dims=[4]", "arch.args.latent_dim=2"], steps=5, batch_size=64)
    trainer = build_trainer(config, torch.device("cpu"))
    assert [len(batch["x"]) for batch in trainer._epoch_batches(2)] == [64] * 5
    assert bench.examples_per_round(trainer.train_loader, 5) == 5 * 64


def test_a_batch_larger_than_the_data_is_refused():
    config = load_bench_config(str(ROOT / "configs/bench/vae_mnist.json"),
                               ["data_loader.args.num_examples=100", "data_loader.args.data_shape=[8]",
                                "arch.args.hidden_dims=[4]"], steps=5, batch_size=128)
    with pytest.raises(UserError, match="batch size 128 is larger than the 100 training examples"):
        build_trainer(config, torch.device("cpu"))


def read(path: str) -> dict:
    return read_config_file(ROOT / path)


@pytest.mark.parametrize("shipped, bench_config", [
    ("configs/graph_vae.json", "configs/bench/graph_vae_shipped.json"),
    ("configs/graph_vae.yaml", "configs/bench/graph_vae_shipped.json"),
    ("configs/graph_lstm_vae.json", "configs/bench/graph_lstm_vae_shipped.json"),
    ("configs/graph_lstm_vae.yaml", "configs/bench/graph_lstm_vae_shipped.json"),
])
def test_shipped_architecture_bench_configs_match_the_shipped_configs(shipped, bench_config):
    ship, mine = read(shipped), read(bench_config)
    assert mine["arch"] == ship["arch"]
    assert mine["optimizer"] == ship["optimizer"]
    assert mine["data_loader"]["type"] == "Synthetic"  # offline


def test_vae_bench_config_has_the_shipped_graph_vae_trunk_decoder_and_latent_size():
    graph, vae = read("configs/graph_vae.json")["arch"]["args"], read("configs/bench/vae_shipped_trunk.json")["arch"]
    assert vae["type"] == "VAE"
    assert vae["args"]["latent_dim"] == graph["num_nodes"] * graph["node_dim"]
    for key in ("hidden_dims", "activation", "batch_norm", "likelihood"):
        assert vae["args"][key] == graph[key], key
    assert read("configs/bench/vae_shipped_trunk.json")["data_loader"] == read(
        "configs/bench/graph_vae_shipped.json")["data_loader"]


def test_kalman_benchmark_tables_report_the_measured_medians(monkeypatch, capsys):
    """With the medians fixed (each variant still runs once), the tables are exactly what they claim: one row per
    variant with ms, frames/s = B * 50 / ms and speed-up = loop / variant, then one scan row per length with
    sequential, parallel and their ratio, forward then forward + backward."""
    calls = []

    def fixed_medians(variants: dict, repeats: int, device) -> dict[str, float]:
        for fn in variants.values():
            fn()  # the real inference runs (and must not fail)
        calls.append(sorted(variants))
        backward = len(calls) % 2 == 1  # after the batched table: forward, then forward + backward, per length
        return {"batched": 2.0, "loop": 8.0} if "loop" in variants else {"sequential": 3.0 if backward else 6.0,
                                                                         "parallel": 1.5 if backward else 4.0}

    monkeypatch.setattr(kalman, "median_ms", fixed_medians)
    monkeypatch.setattr(sys, "argv", ["kalman.py", "--latent-dim", "2", "--batch", "2", "--lengths", "4", "7",
                                      "--repeats", "1"])
    kalman.main()
    assert calls == [["batched", "loop"]] + [["parallel", "sequential"]] * 4
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    numeric = [row for row in rows if row and row[0] in ("loop", "batched", "4", "7") and row[1] != "="]
    assert numeric == [["loop", "8.00", "12500", "1.00"],  # 2 x 50 frames in 8 ms
                       ["batched", "2.00", "50000", "4.00"],
                       ["4", "6.00", "4.00", "1.50", "3.00", "1.50", "2.00"],
                       ["7", "6.00", "4.00", "1.50", "3.00", "1.50", "2.00"]], numeric
