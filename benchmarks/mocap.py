"""Baselines of the motion-capture segmentation, beside the SVAE runs: k-means of the frames, a full-covariance
Gaussian HMM and an AR(1)-HMM, each fitted by EM (E-step: the project's forward-backward, `model/svae/hmm.py`) with
the SVAE config's K states, on the frames the config's loader gives the model (the same file and scaling). Each
is fitted on the training split's whole sequences, as the SVAE trains, and scored on the test split, as test.py
scores: state_ari, state_nmi, state_accuracy, the states in use and, for the HMMs, the held-out negative
log-likelihood per frame (`nll`, nats per frame of the standardized channels: the unit of the SVAEs' iw_nll).
With `test_sequences: all` (the unsupervised protocol) both splits are every recording; with a held-out
recording (configs/mocap/svae_slds_heldout.yaml) `nll` is that recording's.

    python benchmarks/mocap.py                                    # baselines, 5 seeds
    python benchmarks/mocap.py --sweep saved/mocap_slds/sweeps/<id>   # and the SVAE runs of a sweep
    python benchmarks/mocap.py -c configs/mocap/svae_slds_heldout.yaml --seeds 0 1 2 --sweep ...   # held out

The SVAE rows come from the sweep folder's runs (test.py's metrics of each seed, `iw_nll` as `nll`, and its
wall-clock seconds, training and evaluation). A baseline's seed draws its k-means++ start; the Gaussian HMM
starts from that seed's k-means, the AR-HMM from its own k-means of the steps (`model/svae/ar_hmm.py`, the
variational EM of SVAE-SLDS's AR-HMM start, here on the frames with the SLDS's priors for D dimensions).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from model.expfam import dirichlet  # noqa: E402
from model.expfam.mniw import MNIWNatural  # noqa: E402
from model.kmeans import kmeans  # noqa: E402
from model.metrics import adjusted_rand_index, matched_accuracy, normalized_mutual_info  # noqa: E402
from model.svae.ar_hmm import ARHMMPrior, StepMoments, fit_ar_hmm, pooled_dynamics_prior  # noqa: E402
from model.svae.chain import point_dynamics  # noqa: E402
from model.svae.hmm import hmm_posterior  # noqa: E402
from trainer.components import build_data, load_and_check  # noqa: E402
from utils.cli import run_main  # noqa: E402
from trainer.sweep.run import RESULT_FILE  # noqa: E402

COVARIANCE_FLOOR = 1e-3  # added to each state's covariance (standardized units): a state on few frames stays proper
IN_USE = 0.01  # a state is in use when it is the most likely state of at least this share of the frames


class HMM(NamedTuple):
    """A fitted HMM at its point estimate: log_init (K,), log_trans (K, K), and `node(frames, mask)`, the node
    log-potentials (B, T, K) of frames (B, T, D) plus each sequence's log-density of what the nodes leave out
    (B,) (the AR-HMM's first frame); EM iterations."""
    log_init: torch.Tensor
    log_trans: torch.Tensor
    node: object
    iterations: int


def gaussian_hmm(frames: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator,
                 max_iter: int = 500, tol: float = 1e-7) -> HMM:
    """EM for an HMM with full-covariance Gaussian emissions on sequences frames (B, T, D) (real where mask
    (B, T)), from the k-means of the real frames (means; every covariance the frames' covariance; uniform
    initial and transition probabilities), until the log-likelihood gains less than `tol` relative. Padded
    frames get a zero log-potential, which leaves the real frames' posterior exact (the transition rows sum
    to 1)."""
    x = frames[mask]
    dims, f64 = x.shape[1], frames.dtype
    _, means = kmeans(x, k, generator)
    covariances = torch.cov(x.T).expand(k, dims, dims)
    log_init = torch.full((k,), -math.log(k), dtype=f64)
    log_trans = torch.full((k, k), -math.log(k), dtype=f64)

    def emission_node(means: torch.Tensor, covariances: torch.Tensor):
        emission = torch.distributions.MultivariateNormal(means, covariances + COVARIANCE_FLOOR * torch.eye(dims))

        def node(frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_p = torch.where(mask[..., None], emission.log_prob(frames[..., None, :]), 0.0)
            return log_p, torch.zeros(len(frames), dtype=frames.dtype)

        return node

    previous = -math.inf
    for iteration in range(1, max_iter + 1):
        node = emission_node(means, covariances)
        post = hmm_posterior(log_init, log_trans, node(frames, mask)[0])
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
    return HMM(log_init, log_trans, node, iteration)


def ar_hmm(frames: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator, prior_alpha: float = 1.0,
           stickiness: float = 10.0, max_iter: int = 200) -> HMM:
    """An AR(1)-HMM with an intercept, x_t+1 = A_{z_t} x_t + b_{z_t} + eps, eps ~ N(0, Q_{z_t}), fitted by EM
    at the point estimate (`fit_ar_hmm`, variational=False) to frames (B, T, D) (real where mask (B, T)), from a
    k-means of the poses x_t, under Dirichlet priors `prior_alpha` (plus `stickiness` on the diagonal of Pi)
    and a dynamics prior centred on one AR fit to every step (`pooled_dynamics_prior`); returned at its point
    estimate (E[pi0], E[Pi], (A, b) = M, Q = Psi / nu). The first frame of a sequence is Gaussian with the real
    frames' mean and covariance."""
    dims, f64 = frames.shape[-1], frames.dtype
    x = torch.where(mask[..., None], frames, 0.0)
    moments, steps = StepMoments.of_points(x, intercept=True), mask[:, 1:].to(f64)
    prior = ARHMMPrior(dirichlet.alpha_to_natural(torch.full((k,), prior_alpha, dtype=f64)),
                       dirichlet.alpha_to_natural(prior_alpha + stickiness * torch.eye(k, dtype=f64)),
                       pooled_dynamics_prior(moments, steps, k))
    fit = fit_ar_hmm(moments, x[:, :-1], prior, steps, restarts=1, max_iter=max_iter, tol=1e-6, generator=generator,
                     variational=False)
    A, Q_chol = point_dynamics(MNIWNatural(*(p + c for p, c in zip(prior.dynamics, fit.dynamics))))
    steps = torch.distributions.MultivariateNormal(torch.zeros(k, dims, dtype=f64), scale_tril=Q_chol)
    real = frames[mask]
    first = torch.distributions.MultivariateNormal(real.mean(0), torch.cov(real.T) + COVARIANCE_FLOOR * torch.eye(dims))

    def node(frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([frames[:, :-1], torch.ones_like(frames[:, :-1, :1])], -1)
        predicted = torch.einsum("kij,btj->btki", A, inputs)  # (B, T-1, k, D)
        log_p = steps.log_prob(frames[:, 1:, None] - predicted)  # z_t governs the step t -> t+1
        log_p = torch.where(mask[:, 1:, None], log_p, 0.0)
        return torch.cat([log_p, torch.zeros_like(log_p[:, :1])], 1), first.log_prob(frames[:, 0])

    initial = dirichlet.natural_to_alpha(prior.initial_state + fit.initial_state)
    transitions = dirichlet.natural_to_alpha(prior.transitions + fit.transitions)
    return HMM((initial / initial.sum()).log(), (transitions / transitions.sum(-1, keepdim=True)).log(), node,
               fit.iterations)


def decode(hmm: HMM, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The most likely state per frame (B, T) (q(z_t)'s argmax) and the negative log-likelihood per real frame
    of frames (B, T, D) under the fitted HMM."""
    node, rest = hmm.node(frames, mask)
    post = hmm_posterior(hmm.log_init, hmm.log_trans, node)
    return post.marginals.argmax(-1), -float((post.log_z + rest).sum()) / float(mask.sum())


def scores(labels: torch.Tensor, states: torch.Tensor) -> dict[str, float]:
    """Segmentation scores of states against labels, both (N,) over the labelled frames."""
    share = torch.bincount(states).double() / len(states)
    return {"state_ari": adjusted_rand_index(labels, states), "state_nmi": normalized_mutual_info(labels, states),
            "state_accuracy": matched_accuracy(labels, states), "states_in_use": float((share >= IN_USE).sum())}


def whole_sequences(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """frames (B, T, D) float64, mask (B, T) and labels (B, T) of a split of whole sequences."""
    batch = dataset.__getitems__(list(range(len(dataset))))
    mask = batch.get("mask", torch.ones(batch["x"].shape[:2], dtype=torch.bool))
    return batch["x"].double(), mask, batch.get("labels", torch.full(mask.shape, -1))


def baselines(config: dict, seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    """Per method ("k-means of the frames", "Gaussian HMM (EM)", "AR(1)-HMM (EM)"), one row of scores per seed
    (and `nll` for the HMMs), with seconds."""
    args = config["data_loader"]["args"]
    config = {**config, "data_loader": {**config["data_loader"], "args": {**args, "window": None, "stride": None,
                                                                          "batch_size": 1}}}
    data = build_data(config)
    train, train_mask, _ = whole_sequences(data.train_set)
    test, test_mask, labels = whole_sequences(data.test_set)
    labelled = test_mask & (labels >= 0)
    arch = config["arch"]["args"]
    k = arch["num_states"]
    rows: dict[str, list[dict[str, float]]] = {"k-means of the frames": [], "Gaussian HMM (EM)": [],
                                               "AR(1)-HMM (EM)": []}
    for seed in seeds:
        started = time.perf_counter()
        _, centres = kmeans(train[train_mask], k, torch.Generator().manual_seed(seed))
        states = torch.cdist(test, centres).argmin(-1)
        rows["k-means of the frames"].append({**scores(labels[labelled], states[labelled]),
                                              "seconds": time.perf_counter() - started})
        for method, fit in [("Gaussian HMM (EM)", gaussian_hmm),
                            ("AR(1)-HMM (EM)", lambda *a: ar_hmm(*a, prior_alpha=arch.get("prior_alpha", 1.0),
                                                                 stickiness=arch.get("stickiness", 10.0)))]:
            started = time.perf_counter()
            hmm = fit(train, train_mask, k, torch.Generator().manual_seed(seed))
            states, nll = decode(hmm, test, test_mask)
            rows[method].append({**scores(labels[labelled], states[labelled]), "nll": nll,
                                 "em_iterations": hmm.iterations, "seconds": time.perf_counter() - started})
    return rows


def sweep_rows(folder: Path) -> list[dict[str, float]]:
    """The finished runs of a sweep folder: their test metrics and seconds (training and evaluation)."""
    rows = []
    for path in sorted(folder.glob(f"*/{RESULT_FILE}")):
        record = json.loads(path.read_text())
        if record.get("status") == "complete":
            metrics = record["metrics"]
            run_dir = path.parent
            usage = json.loads((run_dir / "test_metrics.json").read_text()).get("state_usage")
            row = {**metrics, "seconds": record["seconds"], "seed": record["seed"]}
            if "iw_nll" in metrics:
                row["nll"] = metrics["iw_nll"]
            if usage is not None:
                row["states_in_use"] = float(sum(u >= IN_USE for u in usage))
            rows.append(row)
    if not rows:
        raise SystemExit(f"error: no finished runs in {folder}; run the sweep first "
                         f"(docs/RESULTS.md, 'Motion capture')")
    return rows


def sweep_architecture(folder: Path) -> str:
    """The architecture of a sweep folder's runs (from the first run's config.yaml)."""
    for path in sorted(folder.glob("*/config.yaml")):
        return yaml.safe_load(path.read_text())["arch"]["type"]
    raise SystemExit(f"error: no run folders in {folder}; run the sweep first (docs/RESULTS.md, 'Motion capture')")


def summary(values: list[float]) -> str:
    """mean +- sd (min-max) over seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    columns = ["state_ari", "state_nmi", "state_accuracy", "states_in_use", "nll", "seconds"]
    lines = ["| method | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for method, runs in rows.items():
        cells = [summary([float(run[c]) for run in runs]) if all(c in run for run in runs) else "-" for c in columns]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/mocap/svae_slds.yaml", help="the SVAE config (data and K)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sweep", type=Path, nargs="+", default=[],
                        help="sweep folders of SVAE configs on the same data and split, whose runs join the table")
    parser.add_argument("--json", type=Path, help="write every row to this file")
    args = parser.parse_args(argv)

    def run() -> None:
        torch.set_num_threads(1)
        config = load_and_check(args.config)
        rows = baselines(config, args.seeds)
        for folder in args.sweep:
            rows[f"{sweep_architecture(folder)} ({folder})"] = sweep_rows(folder)
        k = config["arch"]["args"]["num_states"]
        print(f"{config['data_loader']['args']['path']}: K = {k} states, scale "
              f"{config['data_loader']['args'].get('scale', 'none')}, one thread; mean ± sd (min-max) over seeds")
        print(table(rows))
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2))

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
