"""What the Sequences loader adds to an SVAE-SLDS training step: batches gathered from a user's .npz by the
DataLoader, against the same tensors fed directly.

    taskset -c 0 python benchmarks/sequences_loader.py --threads 1
    options: --steps S (20 per round)  --repeats R (7)  --bs B (32)  --window W (30)  --channels D (12)  --json OUT

A generated .npz of 120 sequences of 60-200 frames and D channels (smooth random walks with labels) is read by
`Sequences` (windows of W frames, stride W/3, standardized); SVAE-SLDS (K = 3, n = 4, hidden [50], the shipped
mean-field settings) trains on it. The "tensors" entry first collects the `x` of the loader's batches of each
round into a list, then steps on them as a fixed-length data set would give them (no mask); the "Sequences"
entry steps while drawing the same batches, mask and all, from the DataLoader, so the ratio includes what the
mask costs the model. Both start every round from the same weights, optimizer state and RNG state, so they do
the same work; the entries take turns (the one that goes first alternates). Printed: ms per step, median over
rounds with the fastest and slowest, and the ratio Sequences / tensors of the medians and the median per-round
ratio (target: below 1.05). A step's time varies by 10-20% on a shared machine, far more than the loader
costs, so the loader's own time per batch (drawing the round's batches without stepping) is printed too, with
its share of the tensors entry's step.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import positive_int, set_threads  # noqa: E402
from trainer.components import build_data, build_model, load_and_check  # noqa: E402
from utils.distributed import sum_statistics  # noqa: E402


def write_recordings(path: Path, channels: int, seed: int = 0) -> Path:
    """120 smooth random walks of 60-200 frames and `channels` channels, with 3 per-frame labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(60, 201, 120)
    points = np.cumsum(rng.normal(0, 0.1, (int(lengths.sum()), channels)), 0).astype(np.float32)
    labels = (np.arange(len(points)) // 25) % 3
    np.savez(path, points=points, lengths=lengths, labels=labels)
    return path


def config(path: Path, batch_size: int, window: int) -> dict:
    return load_and_check(base={
        "name": "bench_sequences", "arch": {"type": "SVAE-SLDS", "args": {
            "num_states": 3, "latent_dim": 4, "hidden_dims": [50], "likelihood": "gaussian",
            "prefix_len": window // 2, "horizon": window // 2}},
        "data_loader": {"type": "Sequences", "args": {
            "path": str(path), "window": window, "stride": max(1, window // 3), "scale": "standardize",
            "batch_size": batch_size, "test_fraction": 0.1}},
        "optimizer": {"type": "Adam", "args": {"lr": 3e-3, "fused": True}}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--bs", type=positive_int, default=32)
    parser.add_argument("--window", type=positive_int, default=30)
    parser.add_argument("--channels", type=positive_int, default=12)
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(write_recordings(Path(tmp) / "recordings.npz", args.channels), args.bs, args.window)
        torch.manual_seed(0)
        data = build_data(cfg)
        model = build_model(cfg, data)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
        loader = data.train_loader(seed=0)
        start = copy.deepcopy((model.state_dict(), optimizer.state_dict()))

        def step(batch: dict[str, torch.Tensor]) -> None:
            optimizer.zero_grad(set_to_none=True)
            out = model(batch)
            out["loss"].backward()
            optimizer.step()
            model.after_optimizer_step(sum_statistics(out["statistics"]))

        def loader_only(epoch: int) -> float:
            """ms per batch of drawing `args.steps` batches from the DataLoader."""
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            begin = time.perf_counter()
            for _ in range(args.steps):
                next(batches)
            return 1e3 * (time.perf_counter() - begin) / args.steps

        def timed_round(entry: str, epoch: int) -> float:
            """ms per step of `args.steps` steps, from the round's start state."""
            model.load_state_dict(start[0])
            optimizer.load_state_dict(start[1])
            loader.sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
            batches = iter(loader)
            if entry == "tensors":  # x alone, as a fixed-length data set in memory would give it
                batches = iter([{"x": next(batches)["x"]} for _ in range(args.steps)])
            torch.manual_seed(epoch)
            begin = time.perf_counter()
            for _ in range(args.steps):
                step(next(batches))
            return 1e3 * (time.perf_counter() - begin) / args.steps

        model.train()
        timed_round("tensors", 0)  # warm-up
        times: dict[str, list[float]] = {"tensors": [], "Sequences": []}
        drawing = []
        for r in range(args.repeats):
            order = ("tensors", "Sequences") if r % 2 == 0 else ("Sequences", "tensors")
            for entry in order:
                times[entry].append(timed_round(entry, r + 1))
            drawing.append(loader_only(r + 1))
    median = {k: statistics.median(v) for k, v in times.items()}
    per_round = statistics.median(s / t for s, t in zip(times["Sequences"], times["tensors"]))
    print(f"SVAE-SLDS step, batch {args.bs}, windows of {args.window} frames x {args.channels} channels, "
          f"{args.steps} steps x {args.repeats} rounds, {threads} thread(s)")
    for entry, values in times.items():
        print(f"  {entry:<10} {median[entry]:8.2f} ms/step  (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  ratio Sequences / tensors: {median['Sequences'] / median['tensors']:.3f} of the medians, "
          f"{per_round:.3f} median per round")
    loader_ms = statistics.median(drawing)
    print(f"  the loader alone: {loader_ms:.3f} ms/batch (min {min(drawing):.3f}, max {max(drawing):.3f}), "
          f"{100 * loader_ms / median['tensors']:.2f}% of a step")
    if args.json is not None:
        args.json.write_text(json.dumps({"ms_per_step": times, "ratio_of_medians": median["Sequences"] /
                                         median["tensors"], "median_round_ratio": per_round,
                                         "loader_ms_per_batch": drawing}, indent=2))


if __name__ == "__main__":
    main()
