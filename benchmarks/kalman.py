"""The SVAE-LDS's exact local inference on its own (Kalman filter + RTS smoother + one backward sample).

    taskset -c 0 python benchmarks/kalman.py --threads 1
    options: --latent-dim n (10)  --batch B (64)  --lengths T.. (50 500 5000)  --scan-batch B (1)
             --repeats R (5)  --device cpu|cuda

Two tables, medians over R rounds that alternate between the variants, float64:
1. batched: one call over B sequences of 50 steps, against "loop": a Python loop over the B sequences
   one at a time, forward + backward through log Z, the moments and the sample as in training. The
   loop is this project's own batched kernel (model/svae/kalman.py) called once per sequence (B = 1);
   it is NOT the authors' code (mattjj/svae) nor the thesis code, which were not run here. It only
   shows what batching over sequences gains within this implementation.
2. scan: the sequential loop over time against the parallel associative scan, per length T, at
   `--scan-batch` sequences: forward only (no gradient) and forward + backward.
The prior is the SVAE-LDS's (its q(theta) at initialisation); node potentials are random.
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

from benchmarks.common import positive_int, set_threads, time_call  # noqa: E402
from model.svae.kalman import LDSPotentials, lds_posterior  # noqa: E402
from model.svae.lds import SVAELDS  # noqa: E402


def random_nodes(B: int, T: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    node_J = torch.exp(torch.randn(B, T, n, dtype=torch.float64, device=device))
    return node_J, node_J * torch.randn(B, T, n, dtype=torch.float64, device=device)


def inference(prior: LDSPotentials, node_J: torch.Tensor, node_h: torch.Tensor, method: str,
              backward: bool) -> None:
    """One call as training makes it: log Z, moments and one sample, then (optionally) the backward pass."""
    if not backward:
        with torch.no_grad():
            lds_posterior(prior, node_J, node_h, 1, method)
        return
    node_J, node_h = node_J.detach().requires_grad_(True), node_h.detach().requires_grad_(True)
    post = lds_posterior(prior, node_J, node_h, 1, method)
    (post.log_z.sum() + post.samples.sum() + post.cov.diagonal(dim1=-2, dim2=-1).sum()).backward()


def median_ms(variants: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds of each variant (a zero-argument callable), rounds alternating."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(time_call(fn, device) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-dim", type=positive_int, default=10)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--scan-batch", type=positive_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = args.latent_dim
    prior = LDSPotentials(*(t.to(device) for t in SVAELDS((50, 20), 100, latent_dim=n).expected_globals().potentials))
    print(f"{device.type}, {threads} thread(s), n={n}, float64, {args.repeats} rounds (median)")

    node_J, node_h = random_nodes(args.batch, 50, n, device)
    ms = median_ms({
        "batched": lambda: inference(prior, node_J, node_h, "sequential", True),
        "loop": lambda: [inference(prior, node_J[b:b + 1], node_h[b:b + 1], "sequential", True)
                         for b in range(args.batch)],
    }, args.repeats, device)
    frames = args.batch * 50
    print(f"\nB={args.batch} sequences of T=50, forward + backward")
    print("loop = this project's batched kernel called once per sequence (B=1), "
          "not the authors' (mattjj/svae) or the thesis code")
    print(f"{'variant':>10} {'ms':>10} {'frames/s':>10} {'speed-up':>9}")
    for name in ("loop", "batched"):
        print(f"{name:>10} {ms[name]:>10.2f} {frames / ms[name] * 1e3:>10.0f} {ms['loop'] / ms[name]:>9.2f}")

    print(f"\nB={args.scan_batch}: sequential loop over time vs parallel scan (ms)")
    print(f"{'T':>6} {'seq fwd':>10} {'par fwd':>10} {'seq/par':>8} {'seq f+b':>10} {'par f+b':>10} {'seq/par':>8}")
    for T in args.lengths:
        node_J, node_h = random_nodes(args.scan_batch, T, n, device)
        row = []
        for backward in (False, True):
            ms = median_ms({method: (lambda m=method: inference(prior, node_J, node_h, m, backward))
                            for method in ("sequential", "parallel")}, args.repeats, device)
            row += [ms["sequential"], ms["parallel"], ms["sequential"] / ms["parallel"]]
        print(f"{T:>6} {row[0]:>10.2f} {row[1]:>10.2f} {row[2]:>8.2f} {row[3]:>10.2f} {row[4]:>10.2f} {row[5]:>8.2f}")


if __name__ == "__main__":
    main()
