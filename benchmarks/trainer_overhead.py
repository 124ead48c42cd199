"""The Trainer's own per-step cost: Trainer.train_epoch against a bare training loop.

    python benchmarks/trainer_overhead.py -c configs/bench/vae_mnist.json --steps 100
    taskset -c 0 python benchmarks/trainer_overhead.py -c configs/bench/vae_mnist.json --steps 100 --threads 1
    options: --repeats R (5)  --warmup W (10 steps)  --bs B  --threads T  --json OUT

One Trainer is built on the CPU (TensorBoard off, no run folder). The bare loop uses the
same model object, optimizers and DataLoader (`trainer.train_loader`):

    for batch in loader:
        opt.zero_grad(set_to_none=True); loss = model(batch)["loss"]; loss.backward(); opt.step()

After --warmup steps of each, both run --steps steps per round, taking turns (the one that
goes first alternates), for --repeats rounds; every round starts from the state the warm-up
left (weights, optimizer, RNG), so both loops do the same work. The ratio of the medians,
trainer / bare, is the Trainer's overhead (target: below 1.10 at batch 128); the median of the
per-round ratios, each of two rounds run back to back, is less sensitive to a machine whose
speed drifts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim import Optimizer  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.common import (build_trainer, load_bench_config, positive_int, restore, set_threads,  # noqa: E402
                               snapshot, time_call)
from trainer import Trainer  # noqa: E402
from utils.cli import ArgumentParser, run_main  # noqa: E402

TARGET = 1.10
CPU = torch.device("cpu")


def bare_steps(model: nn.Module, optimizers: list[Optimizer], loader: DataLoader, steps: int) -> None:
    """`steps` plain training steps, pass after pass over `loader`."""
    model.train()
    done = 0
    while True:
        for batch in loader:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = model(batch)["loss"]
            loss.backward()
            for opt in optimizers:
                opt.step()
            done += 1
            if done == steps:
                return


def trainer_steps(trainer: Trainer, steps: int, epoch: int) -> None:
    trainer.len_epoch = steps
    trainer.train_epoch(epoch)


def measure(trainer: Trainer, steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per round of each loop, the two taking turns; every round starts from the
    state the warm-up left (weights, optimizer, RNG), so that both do the same work."""
    bare = partial(bare_steps, trainer.model_core, list(trainer.optimizers.values()), trainer.train_loader)
    trainer_steps(trainer, warmup, 1)
    bare(warmup)
    start = snapshot(trainer)
    loops = {"trainer": partial(trainer_steps, trainer, steps, 2), "bare": partial(bare, steps)}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(repeats):
        for name in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
            restore(trainer, start)
            times[name].append(time_call(loops[name], CPU))
    return times


def report(times: dict[str, list[float]], steps: int, batch_size: int, threads: int) -> dict:
    trainer_s, bare_s = statistics.median(times["trainer"]), statistics.median(times["bare"])
    return {
        "batch_size": batch_size, "steps": steps, "repeats": len(times["bare"]), "threads": threads,
        "trainer_ms_per_step": 1e3 * trainer_s / steps, "bare_ms_per_step": 1e3 * bare_s / steps,
        "overhead_us_per_step": 1e6 * (trainer_s - bare_s) / steps, "ratio": trainer_s / bare_s,
        "paired_ratio": statistics.median(t / b for t, b in zip(times["trainer"], times["bare"])), "target": TARGET,
        "trainer_seconds": times["trainer"], "bare_seconds": times["bare"],
    }


def print_report(result: dict) -> None:
    print(f"cpu, {result['threads']} thread(s), batch {result['batch_size']}, {result['steps']} steps x "
          f"{result['repeats']} repeats (median)")
    print(f"  trainer  {result['trainer_ms_per_step']:8.3f} ms/step")
    print(f"  bare     {result['bare_ms_per_step']:8.3f} ms/step")
    verdict = "below" if result["ratio"] < TARGET else "AT OR ABOVE"
    print(f"  ratio trainer/bare {result['ratio']:.3f} ({verdict} the {TARGET:.2f} target); "
          f"overhead {result['overhead_us_per_step']:.1f} us/step")
    print(f"  median of the per-round ratios {result['paired_ratio']:.3f} (rounds run back to back)")


def benchmark(args: argparse.Namespace) -> None:
    config = load_bench_config(args.config, [], args.steps, args.bs)
    threads = set_threads(args.threads)
    trainer = build_trainer(config, CPU)
    times = measure(trainer, args.steps, args.repeats, args.warmup)
    result = report(times, args.steps, trainer.train_loader.batch_size, threads)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, **result}, indent=2) + "\n")
        print(f"wrote {args.json}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="config file")
    parser.add_argument("--steps", type=positive_int, required=True, help="optimizer steps per round")
    parser.add_argument("--repeats", type=positive_int, default=5, help="rounds of each loop (default 5)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps of each loop first (default 10)")
    parser.add_argument("--bs", type=positive_int, help="batch size (default: the config's)")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(partial(benchmark, args))


if __name__ == "__main__":
    sys.exit(main())
