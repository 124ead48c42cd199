"""GraphVAE's N per-node bottom-up heads: stacked weights (one matmul per layer) against a Python loop
over N separate small MLPs, forward + backward.

    taskset -c 0 python benchmarks/graph_heads.py --threads 1
    options: --nodes N (5)  --node-dim d (16)  --features F (128)  --hidden H (128)  --bs B.. (128 1024)
             --steps S (200 per round)  --repeats R (5)

Both variants compute the same function (the loop's MLPs get the stacked weights); rounds alternate
between them and the table shows median microseconds per forward + backward.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import microseconds_per_call, positive_int, set_threads  # noqa: E402
from model.networks import StackedMLP, mlp  # noqa: E402


def looped_copy(stacked: StackedMLP, n: int) -> nn.Module:
    """MLP n of `stacked` as an ordinary nn.Sequential."""
    dims = [w.shape[1] for w in stacked.weights] + [stacked.weights[-1].shape[2]]
    net = mlp(dims[0], dims[1:-1], dims[-1], activation="elu")
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, weight, bias in zip(linears, stacked.weights, stacked.biases):
            linear.weight.copy_(weight[n].T)
            linear.bias.copy_(bias[n])
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=positive_int, default=5)
    parser.add_argument("--node-dim", type=positive_int, default=16)
    parser.add_argument("--features", type=positive_int, default=128)
    parser.add_argument("--hidden", type=positive_int, default=128)
    parser.add_argument("--bs", type=positive_int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    stacked = StackedMLP(args.nodes, args.features, [args.hidden], 2 * args.node_dim, "elu")
    loop = nn.ModuleList(looped_copy(stacked, n) for n in range(args.nodes))
    variants = {
        "loop": lambda h: torch.stack([net(h) for net in loop], -2),
        "stacked": lambda h: stacked(h, shared_input=True),
    }
    print(f"cpu, {threads} thread(s), N={args.nodes} heads {args.features}-{args.hidden}-{2 * args.node_dim}, "
          f"{args.steps} steps x {args.repeats} rounds (median us per forward + backward)")
    print(f"{'batch':>6} {'loop us':>9} {'stacked us':>11} {'speed-up':>9}")
    for batch in args.bs:
        h = torch.randn(batch, args.features, requires_grad=True)
        torch.testing.assert_close(variants["loop"](h), variants["stacked"](h), rtol=1e-4, atol=1e-5)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, fn in variants.items():
                times[name].append(microseconds_per_call(lambda: fn(h).sum().backward(), args.steps))
        loop_us, stacked_us = (statistics.median(times[name][1:]) for name in ("loop", "stacked"))
        print(f"{batch:>6} {loop_us:>9.1f} {stacked_us:>11.1f} {loop_us / stacked_us:>9.2f}")


if __name__ == "__main__":
    main()
