"""Training throughput of configs through the real Trainer: steps/s, examples/s, peak memory.

    python benchmarks/bench.py -c configs/bench/vae_mnist.json --steps 50
    python benchmarks/bench.py -c A.json -c B.json --steps 50 --bs 128 1024 --json out.json
    taskset -c 0 python benchmarks/bench.py -c configs/bench/vae_mnist.json --steps 50 --threads 1
    taskset -c 0 python benchmarks/bench.py -c configs/svae_gmm.yaml --compile --steps 100 --threads 1
    options: --repeats R (5)  --warmup W (10 steps)  --device cpu|cuda  --set key.path=value ...

Each config, or each (config, batch size) pair with --bs, is one entry (labelled
`vae_mnist@bs1024`), run in its own long-lived worker process (spawn) that builds the data,
model, optimizers and Trainer once (TensorBoard off, no run folder) and trains --warmup steps.
Every step is a full batch: the training loader drops the short last batch of each pass.
Then, for --repeats rounds, the entries take turns, one at a time, running --steps optimizer
steps through Trainer.train_epoch, the entry that goes first rotating from round to round;
every round starts from the state the warm-up left (weights, optimizer, RNG, batches), so the
rounds of an entry do the same work. Each entry reports its median round with the slowest and
fastest round beside it; `ratio` is its median time over that of the baseline, the first
config at the same batch size, and `spread` is (slowest - fastest round) / median.
With --compile every config is also run compiled (`trainer.compile=true`, labelled `+compile`)
right after its eager entry, so that with one config the compiled entry's ratio is to its eager
twin. `warm-up s` is the wall time of building the Trainer and the warm-up steps; for a compiled
entry, the difference to its eager twin's is the compile time (the first steps compile).

Peak memory (MiB) is measured over building and warm-up, which run the same steps as the timed
rounds (afterwards the worker holds a saved copy of the training state): the worker's peak RSS
on the CPU (the whole process: Python, torch, data, model) and torch.cuda.max_memory_allocated
on CUDA. `base MB` is the same measure before the worker built anything (on the CPU: Python and
the imports).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.common import (build_trainer, load_bench_config, positive_int, restore, set_threads,  # noqa: E402
                               snapshot, synchronize, time_call)
from utils.cli import ArgumentParser, run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402


# ------------------------------------------------------------------ worker process
def worker_main(conn: Connection, config: dict, device_name: str, threads: int | None, warmup: int) -> None:
    """Entry point of a worker: serve rounds until told to stop; report failures on the pipe."""
    try:
        serve(conn, config, torch.device(device_name), threads, warmup)
    except UserError as err:
        conn.send(("user_error", str(err)))
    except Exception:  # noqa: BLE001  (the parent re-raises it with the traceback)
        conn.send(("crash", traceback.format_exc()))


def serve(conn: Connection, config: dict, device: torch.device, threads: int | None, warmup: int) -> None:
    """Build, warm up and say "ready"; then answer every "run" with the seconds of one round,
    each round starting from the state the warm-up left."""
    threads = set_threads(threads)
    base_mem_mb = peak_mem_mb(device)
    started = time.perf_counter()
    trainer = build_trainer(config, device)
    steps, loader = trainer.len_epoch, trainer.train_loader
    trainer.len_epoch = warmup
    trainer.train_epoch(1)
    trainer.len_epoch = steps
    synchronize(device)
    ready = {"threads": threads, "batch_size": loader.batch_size, "base_mem_mb": base_mem_mb,
             "peak_mem_mb": peak_mem_mb(device), "warmup_s": time.perf_counter() - started,
             "examples": examples_per_round(loader, steps)}
    start = snapshot(trainer)
    conn.send(("ready", ready))
    while conn.recv() == "run":
        restore(trainer, start)
        conn.send(("done", time_call(partial(trainer.train_epoch, 2), device)))


def examples_per_round(loader: DataLoader, steps: int) -> int:
    """Examples in a round of `steps` steps: all are full batches (build_trainer drops short ones)."""
    assert loader.drop_last, "the benchmark's training loader must drop the short last batch"
    return steps * loader.batch_size


def peak_mem_mb(device: torch.device) -> float:
    """This process's peak CUDA memory allocated, or its peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------ parent process
@dataclass
class Entry:
    label: str
    path: str
    config: dict


@dataclass
class Worker:
    """The parent's handle on one entry's worker process."""

    entry: Entry
    conn: Connection
    process: mp.process.BaseProcess
    info: dict = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, ctx: mp.context.SpawnContext, entry: Entry, device: str, threads: int | None,
              warmup: int) -> "Worker":
        conn, child = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(child, entry.config, device, threads, warmup),
                              name=f"bench {entry.label}", daemon=True)
        process.start()
        child.close()
        return cls(entry, conn, process)

    def receive(self) -> Any:
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the worker of {self.entry.label} died (exit code {self.process.exitcode})") from None
        if kind == "user_error":
            raise UserError(f"{self.entry.label}: {payload}")
        if kind == "crash":
            raise RuntimeError(f"the worker of {self.entry.label} failed:\n{payload}")
        return payload

    def wait_ready(self) -> None:
        self.info = self.receive()

    def run_round(self) -> None:
        self.conn.send("run")
        self.seconds.append(self.receive())

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:  # the worker is gone already
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def unique_labels(labels: list[str]) -> list[str]:
    """Number repeated labels (`a#1`, `a#2`) so that every entry can be told apart."""
    counts, seen = Counter(labels), Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if counts[label] == 1 else f"{label}#{seen[label]}")
    return out


def make_entries(paths: list[str], batch_sizes: list[int] | None, overrides: list[str], steps: int,
                 compile_too: bool = False) -> list[Entry]:
    """One validated config per (batch size, config), grouped by batch size, each followed by its compiled
    twin with `compile_too`; a bad config raises ConfigError here."""
    modes = [False, True] if compile_too else [False]
    runs = [(path, bs, compiled) for bs in (batch_sizes or [None]) for path in paths for compiled in modes]
    configs = [load_bench_config(path, [*overrides, *(["trainer.compile=true"] if compiled else [])], steps, bs)
               for path, bs, compiled in runs]
    labels = unique_labels([Path(path).stem + ("+compile" if compiled else "") + (f"@bs{bs}" if bs else "")
                            for path, bs, compiled in runs])
    return [Entry(label, path, config) for label, (path, _, _), config in zip(labels, runs, configs)]


def run_rounds(workers: list[Worker], repeats: int) -> None:
    """`repeats` rounds; each round every worker runs once, the starting one rotating."""
    for r in range(repeats):
        start = r % len(workers)
        for worker in workers[start:] + workers[:start]:
            worker.run_round()


def baselines(workers: list[Worker]) -> dict[int, Worker]:
    """Batch size -> the first entry at that batch size, which the others are compared with."""
    first: dict[int, Worker] = {}
    for w in workers:
        first.setdefault(w.info["batch_size"], w)
    return first


def summarize(workers: list[Worker], device: str, steps: int, repeats: int, warmup: int) -> list[dict]:
    """One row per entry: median, slowest and fastest round as rates, and the ratio of its median
    time to its baseline's (`baselines`)."""
    first = baselines(workers)
    rows = []
    for w in workers:
        seconds, slowest, fastest = statistics.median(w.seconds), max(w.seconds), min(w.seconds)
        base = first[w.info["batch_size"]]
        examples = w.info["examples"]
        rows.append({
            "config": w.entry.label, "config_path": w.entry.path, "batch_size": w.info["batch_size"],
            "steps_per_s": steps / seconds, "steps_per_s_min": steps / slowest, "steps_per_s_max": steps / fastest,
            "examples_per_s": examples / seconds, "examples_per_s_min": examples / slowest,
            "examples_per_s_max": examples / fastest,
            "peak_mem_mb": w.info["peak_mem_mb"], "base_mem_mb": w.info["base_mem_mb"],
            "warmup_s": w.info["warmup_s"],
            "baseline": base.entry.label, "ratio_to_baseline": seconds / statistics.median(base.seconds),
            "spread": (slowest - fastest) / seconds,
            "seconds": w.seconds, "device": device, "threads": w.info["threads"], "steps": steps,
            "repeats": repeats, "warmup": warmup,
        })
    return rows


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"device {first['device']}, {first['threads']} thread(s), {first['steps']} steps x "
          f"{first['repeats']} rounds (median, min-max over the rounds), warm-up {first['warmup']} steps, "
          "full batches only")
    width = max(len("config"), *(len(row["config"]) for row in rows))
    steps_range = [f"{row['steps_per_s_min']:.2f}-{row['steps_per_s_max']:.2f}" for row in rows]
    examples_range = [f"{row['examples_per_s_min']:.0f}-{row['examples_per_s_max']:.0f}" for row in rows]
    sw, ew = max(len("min-max"), *map(len, steps_range)), max(len("min-max"), *map(len, examples_range))
    print(f"{'config':<{width}}  {'batch':>6}  {'steps/s':>8}  {'min-max':>{sw}}  {'examples/s':>10}  "
          f"{'min-max':>{ew}}  {'peak MB':>8}  {'base MB':>8}  {'ratio':>6}  {'spread':>6}  {'warm-up s':>9}")
    for row, srange, erange in zip(rows, steps_range, examples_range):
        print(f"{row['config']:<{width}}  {row['batch_size']:>6}  {row['steps_per_s']:>8.2f}  {srange:>{sw}}  "
              f"{row['examples_per_s']:>10.0f}  {erange:>{ew}}  {row['peak_mem_mb']:>8.1f}  "
              f"{row['base_mem_mb']:>8.1f}  {row['ratio_to_baseline']:>6.3f}  {row['spread']:>6.1%}  "
              f"{row['warmup_s']:>9.1f}")
    named = {row["batch_size"]: row["baseline"] for row in rows}
    print("ratio: median time over the baseline's, the first config at the same batch size ("
          + "; ".join(f"batch {bs}: {label}" for bs, label in named.items()) + ")")


def resolve_device(name: str | None) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return name


def benchmark(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    entries = make_entries(args.config, args.bs, args.set, args.steps, args.compile)
    ctx = mp.get_context("spawn")
    workers = [Worker.start(ctx, entry, device, args.threads, args.warmup) for entry in entries]
    try:
        for worker in workers:
            worker.wait_ready()
        run_rounds(workers, args.repeats)
    finally:
        for worker in workers:
            worker.stop()
    rows = summarize(workers, device, args.steps, args.repeats, args.warmup)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="config file (repeatable)")
    parser.add_argument("--steps", type=positive_int, required=True, help="optimizer steps per timed round")
    parser.add_argument("--bs", type=positive_int, nargs="+", help="batch sizes to sweep (default: the config's)")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads in every worker")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per entry (default 5)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value in every config, e.g. --set arch.args.latent_dim=32")
    parser.add_argument("--compile", action="store_true",
                        help="also run every config compiled (trainer.compile=true), right after its eager entry")
    parser.add_argument("--json", metavar="OUT", help="also write the results as a JSON list")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(partial(benchmark, args))


if __name__ == "__main__":
    sys.exit(main())
