"""Evaluate a checkpoint on the test split and write test_metrics.json into its run folder.

    python test.py -r saved/<name>/<run>/checkpoints/model_best.pt [--iw-samples 100] [--device cpu] [--bs N]
"""
from __future__ import annotations

from utils.versions import require_minimum_versions

require_minimum_versions()  # before the imports that fail on an older torch

import json  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from base.base_trainer import load_model_weights  # noqa: E402
from base.metric import DEFAULT_OPTIONS  # noqa: E402
from logger import TensorboardWriter  # noqa: E402
from logger.figures import FigureWriter, file_stem  # noqa: E402
from trainer.build import build_data, build_model, eval_metric_names, load_and_check  # noqa: E402
from utils.checkpoint import load_checkpoint, run_dir_of, write_atomic  # noqa: E402
from utils.cli import ArgumentParser, run_main  # noqa: E402
from utils.device import move_to  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no GPU is available; use --device cpu")
    return device


def evaluate(checkpoint_path: str | Path, device: str = "auto", batch_size: int | None = None,
             overrides: list[str] = (), iw_samples: int = DEFAULT_OPTIONS["iw_samples"],
             progress: bool | None = None) -> dict[str, Any]:
    """Rebuild the model from the checkpoint's config, evaluate it on the test split and
    write `test_metrics.json` into the run folder. Returns the metrics."""
    if iw_samples < 1:
        raise ConfigError(f"--iw-samples must be >= 1, got {iw_samples}")
    checkpoint = load_checkpoint(checkpoint_path)
    config = load_and_check(base=checkpoint["config"], overrides=overrides)
    torch_device = resolve_device(device)
    data = build_data(config)
    model = build_model(config, data)
    load_model_weights(model, checkpoint)
    model.to(torch_device).eval()
    metrics = eval_metric_names(config, model, data)
    options = {**DEFAULT_OPTIONS, "iw_samples": iw_samples}
    seed_everything(config["seed"])

    loader = data.test_loader(batch_size)
    show = progress if progress is not None else sys.stderr.isatty()
    per_example: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in tqdm(loader, desc=f"evaluating {', '.join(metrics)}", disable=not show, dynamic_ncols=True):
        out = model.evaluate_batch(move_to(batch, torch_device), metrics, options)
        for name, values in out.items():
            per_example[name].append(values.detach().cpu())
    results = model.summarize_evaluation({k: torch.cat(v) for k, v in per_example.items()}, metrics)
    results["num_examples"] = len(loader.dataset)
    if "iw_nll" in metrics:
        results["iw_samples"] = iw_samples
    results.update({"epoch": checkpoint["epoch"], "checkpoint": str(Path(checkpoint_path).resolve())})

    run_dir = run_dir_of(checkpoint_path) or Path(checkpoint_path).resolve().parent
    write_atomic(run_dir / "test_metrics.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    writer = TensorboardWriter(run_dir, enabled=config["trainer"]["tensorboard"], splits=("test",))
    step = checkpoint["global_step"]
    for name, value in metric_values(results, metrics).items():
        writer.test.add_scalar(f"test/{name}", value, step)
    writer.test.add_text("test_metrics", "\n".join("    " + line for line in format_table(results).splitlines()), step)
    vis = loader.dataset.__getitems__(list(range(min(model.visualization_size, len(loader.dataset)))))
    figures = FigureWriter(writer.test, run_dir / "figures", lambda tag: f"{file_stem(tag)}.png")
    with torch.no_grad():
        model.visualize(figures, move_to(vis, torch_device), step, "test")
    writer.close()
    return results


def metric_values(results: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, float]:
    """The numbers of `results` that the metrics reported (`elbo`, `elbo_per_step`, ...), for charts;
    bookkeeping (epoch, num_examples, iw_samples, prefix_len, ...) stays in test_metrics.json and the text tab."""
    return {key: value for key, value in results.items()
            if isinstance(value, (int, float)) and any(key == m or key.startswith(f"{m}_") for m in metrics)}


MAX_PRINTED_ENTRIES = 64  # larger lists (e.g. predicted_sequences) are only named, with their shape


def format_value(value: Any) -> list[str]:
    """A metric as console lines: numbers rounded, a list on one line, a list of rows as a small
    matrix, a large or ragged list as its shape (its values are in test_metrics.json), a dict one line per
    entry."""
    if isinstance(value, float):
        return [f"{value:.4f}"]
    if isinstance(value, dict):  # e.g. per_sequence: one line per entry
        return [f"{key}: " + (", ".join(f"{k} {format_value(v)[0]}" for k, v in entry.items())
                              if isinstance(entry, dict) else format_value(entry)[0])
                for key, entry in value.items()] or ["{}"]
    if not isinstance(value, list):
        return [str(value)]
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return [f"list of {len(value)} (see test_metrics.json)"]
    if array.ndim > 2 or array.size > MAX_PRINTED_ENTRIES:
        return [f"array of shape {array.shape} (see test_metrics.json)"]
    integral = bool(np.all(array == np.round(array)))
    text = np.array2string(array, precision=4, suppress_small=True, max_line_width=10_000, separator=" ",
                           formatter={"float_kind": "{:.0f}".format} if integral else None)
    return text.splitlines()


def format_table(results: dict[str, Any]) -> str:
    """One row per metric; a matrix continues on the following lines, aligned under its first row."""
    width = max(len(k) for k in results)
    lines = []
    for key, value in results.items():
        first, *rest = format_value(value)
        lines.append(f"{key:<{width}}  {first}")
        lines.extend(f"{'':<{width}}  {line}" for line in rest)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--resume", required=True, help="checkpoint to evaluate")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--bs", type=int, help="evaluation batch size (default: the training batch size)")
    parser.add_argument("--iw-samples", type=int, default=DEFAULT_OPTIONS["iw_samples"],
                        help="importance samples K for iw_nll")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)

    def run() -> None:
        results = evaluate(args.resume, args.device, args.bs, args.set, args.iw_samples)
        print(format_table(results))
        run_dir = run_dir_of(args.resume) or Path(args.resume).resolve().parent
        print(f"wrote {run_dir / 'test_metrics.json'}")

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
