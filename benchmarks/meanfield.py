"""The SVAE-GMM's mean-field sweep on its own: eager against torch.compile, per batch size.

    taskset -c 0 python benchmarks/meanfield.py --threads 1 --bs 50 1000
    options: --components K (15)  --latent-dim d (2)  --sweeps N (300 per round)  --repeats R (5)

Times `meanfield_update` (one sweep: q(x) from the responsibilities, then q(z) and the local KL)
without gradient, as the fixed-point loop runs it, in float64 on the CPU. The compiled variant
is `torch.compile(meanfield_update, dynamic=False)`; its one-off compile time is printed too.
Rounds alternate between the variants; medians in microseconds per sweep.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import microseconds_per_call, positive_int, set_threads  # noqa: E402
from model.svae.gmm import SVAEGMM  # noqa: E402
from model.svae.gmm_inference import meanfield_update  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=positive_int, nargs="+", default=[50, 1000])
    parser.add_argument("--components", type=positive_int, default=15)
    parser.add_argument("--latent-dim", type=positive_int, default=2)
    parser.add_argument("--sweeps", type=positive_int, default=300)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    model = SVAEGMM((2,), 500, num_components=args.components, latent_dim=args.latent_dim)
    mix = model.expected_globals().potentials
    compiled = torch.compile(meanfield_update, dynamic=False)
    print(f"cpu, {threads} thread(s), K={args.components}, d={args.latent_dim}, {args.sweeps} sweeps x "
          f"{args.repeats} repeats (median)")
    print(f"{'batch':>6} {'eager us':>10} {'compiled us':>12} {'speed-up':>9} {'compile s':>10}")
    with torch.no_grad():
        for batch in args.bs:
            node_J = torch.rand(batch, args.latent_dim, dtype=torch.float64) + 0.5
            node_h = torch.randn(batch, args.latent_dim, dtype=torch.float64)
            r = torch.full((batch, args.components), 1.0 / args.components, dtype=torch.float64)
            call = (node_J, node_h, r, mix)
            started = time.perf_counter()
            compiled(*call)
            compile_seconds = time.perf_counter() - started
            for fn in (meanfield_update, compiled):  # warm-up
                microseconds_per_call(lambda f=fn: f(*call), 20)
            eager, fast = [], []
            for _ in range(args.repeats):
                eager.append(microseconds_per_call(lambda: meanfield_update(*call), args.sweeps))
                fast.append(microseconds_per_call(lambda: compiled(*call), args.sweeps))
            e, c = statistics.median(eager), statistics.median(fast)
            print(f"{batch:>6} {e:>10.1f} {c:>12.1f} {e / c:>9.2f} {compile_seconds:>10.1f}")


if __name__ == "__main__":
    main()
