"""Baselines of the motion-capture segmentation, beside the SVAE runs: k-means of the frames and a
full-covariance Gaussian HMM fitted by EM (E-step: the project's forward-backward, `model/svae/hmm.py`), with
the SVAE config's K states, on the frames the config's loader gives the model (the same file, scaling and
test split), over seeds; mean +- sd (min-max) of state_ari, state_nmi, state_accuracy and the states in use.

    python benchmarks/mocap.py                                    # baselines, 5 seeds
    python benchmarks/mocap.py --sweep saved/mocap_slds/sweeps/<id>   # and the SVAE runs of a sweep

The SVAE rows come from the sweep folder's runs (test.py's metrics of each seed, and its wall-clock seconds,
training and evaluation). A baseline's seed draws its k-means++ start; the HMM starts from that seed's k-means.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.metrics import adjusted_rand_index, matched_accuracy, normalized_mutual_info  # noqa: E402
from model.svae.hmm import hmm_posterior  # noqa: E402
from trainer.components import build_data, load_and_check  # noqa: E402
from utils.cli import run_main  # noqa: E402
from trainer.sweep.run import RESULT_FILE  # noqa: E402

COVARIANCE_FLOOR = 1e-3  # added to each state's covariance (standardized units): a state on few frames stays proper
IN_USE = 0.01  # a state is in use when it is the most likely state of at least this share of the frames


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm from a k-means++ start on frames x (N, D): (assignments (N,), centres (k, D))."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(k - 1):
        nearest = torch.cdist(x, centres).pow(2).min(1).values
        centres = torch.cat([centres, x[torch.multinomial(nearest, 1, generator=generator)]])
    assignments = torch.full((len(x),), -1)
    for _ in range(max_iter):
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assignments):
            break
        assignments = new
        counts = torch.bincount(assignments, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assignments, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return assignments, centres


def gaussian_hmm(frames: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator,
                 max_iter: int = 500, tol: float = 1e-7) -> tuple[torch.Tensor, int]:
    """EM for an HMM with full-covariance Gaussian emissions on sequences frames (B, T, D) (real where mask
    (B, T)), from the k-means of the real frames (means; every covariance the frames' covariance; uniform
    initial and transition probabilities), until the log-likelihood gains less than `tol` relative. Padded
    frames get a zero log-potential, which leaves the real frames' posterior exact (the transition rows sum
    to 1). Returns the most likely state per frame (B, T) (q(z_t)'s argmax) and the EM iterations."""
    x = frames[mask]
    dims, f64 = x.shape[1], frames.dtype
    _, means = kmeans(x, k, generator)
    covariances = torch.cov(x.T).expand(k, dims, dims)
    log_init = torch.full((k,), -math.log(k), dtype=f64)
    log_trans = torch.full((k, k), -math.log(k), dtype=f64)
    previous = -math.inf
    for iteration in range(1, max_iter + 1):
        emission = torch.distributions.MultivariateNormal(means, covariances + COVARIANCE_FLOOR * torch.eye(dims))
        node = torch.where(mask[..., None], emission.log_prob(frames[..., None, :]), 0.0)  # (B, T, k)
        post = hmm_posterior(log_init, log_trans, node)
        log_likelihood = float(post.log_z.sum())
        if log_likelihood - previous < tol * abs(log_likelihood):
            break
        previous = log_likelihood
        weights = post.marginals * mask[..., None]  # (B, T, k)
        pairs = (post.pair_marginals * mask[:, 1:, None, None]).sum((0, 1))
        log_init = (post.marginals[:, 0].mean(0)).log()
        log_trans = (pairs / pairs.sum(1, keepdim=True)).log()
        counts = weights.sum((0, 1))  # (k,)
        means = torch.einsum("btk,btd->kd", weights, frames) / counts[:, None]
        centred = frames[:, :, None] - means  # (B, T, k, D)
        covariances = torch.einsum("btk,btki,btkj->kij", weights, centred, centred) / counts[:, None, None]
    return post.marginals.argmax(-1), iteration


def scores(labels: torch.Tensor, states: torch.Tensor) -> dict[str, float]:
    """Segmentation scores of states against labels, both (N,) over the labelled frames."""
    share = torch.bincount(states).double() / len(states)
    return {"state_ari": adjusted_rand_index(labels, states), "state_nmi": normalized_mutual_info(labels, states),
            "state_accuracy": matched_accuracy(labels, states), "states_in_use": float((share >= IN_USE).sum())}


def baselines(config: dict, seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    """Per method ("k-means of the frames", "Gaussian HMM (EM)"), one row of scores per seed, with seconds."""
    data = build_data(config)
    test = data.test_set
    batch = test.__getitems__(list(range(len(test))))
    mask = batch.get("mask", torch.ones(batch["x"].shape[:2], dtype=torch.bool))
    frames, labels = batch["x"].double(), batch["labels"]
    labelled = mask & (labels >= 0)
    k = config["arch"]["args"]["num_states"]
    rows: dict[str, list[dict[str, float]]] = {"k-means of the frames": [], "Gaussian HMM (EM)": []}
    for seed in seeds:
        started = time.perf_counter()
        assignments, _ = kmeans(frames[mask], k, torch.Generator().manual_seed(seed))
        states = torch.full(mask.shape, -1)
        states[mask] = assignments
        rows["k-means of the frames"].append({**scores(labels[labelled], states[labelled]),
                                              "seconds": time.perf_counter() - started})
        started = time.perf_counter()
        states, iterations = gaussian_hmm(frames, mask, k, torch.Generator().manual_seed(seed))
        rows["Gaussian HMM (EM)"].append({**scores(labels[labelled], states[labelled]), "em_iterations": iterations,
                                          "seconds": time.perf_counter() - started})
    return rows


def sweep_rows(folder: Path) -> list[dict[str, float]]:
    """The finished runs of a sweep folder: their test metrics and seconds (training and evaluation)."""
    rows = []
    for path in sorted(folder.glob(f"*/{RESULT_FILE}")):
        record = json.loads(path.read_text())
        if record.get("status") == "complete":
            metrics = record["metrics"]
            run_dir = path.parent
            usage = json.loads((run_dir / "test_metrics.json").read_text()).get("state_usage", [])
            rows.append({**metrics, "states_in_use": float(sum(u >= IN_USE for u in usage)),
                         "seconds": record["seconds"], "seed": record["seed"]})
    if not rows:
        raise SystemExit(f"error: no finished runs in {folder}; run the sweep first (README, 'Motion capture')")
    return rows


def summary(values: list[float]) -> str:
    """mean +- sd (min-max) over seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    columns = ["state_ari", "state_nmi", "state_accuracy", "states_in_use", "seconds"]
    lines = ["| method | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for method, runs in rows.items():
        cells = [summary([float(run[c]) for run in runs]) if all(c in run for run in runs) else "" for c in columns]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mocap/svae_slds.yaml", help="the SVAE config (data and K)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sweep", type=Path, help="a sweep folder of the SVAE config, whose runs join the table")
    parser.add_argument("--json", type=Path, help="write every row to this file")
    args = parser.parse_args(argv)

    def run() -> None:
        torch.set_num_threads(1)
        config = load_and_check(args.config)
        rows = baselines(config, args.seeds)
        if args.sweep is not None:
            rows[f"{config['arch']['type']} ({args.config})"] = sweep_rows(args.sweep)
        k = config["arch"]["args"]["num_states"]
        print(f"{config['data_loader']['args']['path']}: K = {k} states, scale "
              f"{config['data_loader']['args'].get('scale', 'none')}, one thread; mean ± sd (min-max) over seeds")
        print(table(rows))
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2))

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
