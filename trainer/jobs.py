"""What train.py, test.py and sweep.py run: `train` (a new, resumed or fine-tuned run of a config) and
`evaluate` (a checkpoint on the test split, written to test_metrics.json), callable directly (tests, the
sweep); the scripts only parse arguments and turn errors into exit statuses."""
from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import EpochCallback, TrainerContext
from base.metric import DEFAULT_OPTIONS
from data_loader import DATA_LOADERS
from logger import TensorboardWriter, setup_logging
from logger.figures import FigureWriter, file_stem
from logger.hparams import HparamsEntry, hparams_entry
from logger.tensorboard import curve_tag
from model import ARCHITECTURES
from trainer.components import build_data, build_model, eval_metric_names, load_and_check
from trainer.optim import build_optimizers
from trainer.restarts import check_select
from trainer.trainer import Trainer
from utils.checkpoint import load_checkpoint, load_model_weights, run_dir_of, write_atomic
from utils.device import move_to, prepare_device
from utils.distributed import DistInfo, broadcast_object, init_distributed, shutdown_distributed
from utils.errors import ConfigError
from utils.run_dir import check_save_dir, new_run_dir, removed_on_failure, write_run_files
from utils.seeding import seed_everything


@dataclass
class TrainResult:
    """The run folder and the last epoch's log (train means, val_* means)."""

    run_dir: Path | None
    metrics: dict[str, float]


@dataclass
class RunOptions:
    """How a program that trains many runs (sweep.py) places and watches one.

    run_dir: the new run's folder (made here; it must not exist) instead of save_dir/<name>/<run_id>.
    after_epoch: called as after_epoch(epoch, log) after each epoch, before its checkpoints are
        written; returning True ends training after that epoch's checkpoints (early stopping, pruning).
    hparams: extra HPARAMS columns for TensorBoard by name (e.g. an Optuna trial's number).
    swept: the config key paths a sweep varies: they lead the HPARAMS table.
    console: log to the console (off: the run's train.log only, no progress bars).
    """

    run_dir: Path | None = None
    after_epoch: EpochCallback | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    swept: tuple[str, ...] = ()
    console: bool = True


def train(config: dict, checkpoint: dict | None = None, checkpoint_path: str | Path | None = None,
          finetune: bool = False, options: RunOptions = RunOptions()) -> TrainResult:
    """Train as `config` says. With a checkpoint: resume its run (same folder, full state),
    or with `finetune` start a new run from its weights only."""
    dist_info = init_distributed()
    try:  # the model and Trainer live in _train's frame: DDP is released before the process group
        return _train(config, checkpoint, checkpoint_path, finetune, dist_info, options)
    finally:
        shutdown_distributed()


def _train(config: dict, checkpoint: dict | None, checkpoint_path: str | Path | None, finetune: bool,
           dist_info: DistInfo, options: RunOptions) -> TrainResult:
    resume = checkpoint is not None and not finetune
    seed_everything(config["seed"] + dist_info.rank)
    run_dir = run_dir_of(checkpoint_path) if resume else None
    new_run = run_dir is None
    if new_run and dist_info.is_main:
        check_save_dir(options.run_dir.parent if options.run_dir is not None else config["trainer"]["save_dir"])
    data = build_data(config)  # a bad data path or model config fails before any run folder exists
    model = build_model(config, data)
    test_metrics = eval_metric_names(config, model, data)  # so does a metric whose field the data lacks
    check_select(config, model, data)  # and a restart score the model does not output
    if new_run and dist_info.is_main:
        run_dir = new_run_dir(config["trainer"]["save_dir"], config["name"], options.run_dir)
    run_dir = broadcast_object(run_dir)
    with removed_on_failure(run_dir, enabled=new_run and dist_info.is_main):
        logger = setup_logging(run_dir / "train.log", config["trainer"]["verbosity"], dist_info.is_main,
                               console=options.console)
        if dist_info.is_main:
            write_run_files(run_dir, config, keep_environment=resume)
            logger.info("%s run %s", "resuming" if resume else "starting", run_dir)
        hparams = hparams_entry(config, test_metrics, partial(curve_tag, unit=model.unit), options.swept,
                                options.hparams, hparams_domains())
        trainer = _build_trainer(config, data, model, run_dir, dist_info, logger, checkpoint, checkpoint_path,
                                 finetune, options, hparams)
    return TrainResult(run_dir, trainer.fit())


def hparams_domains() -> dict[str, tuple[str, ...]]:
    """The HPARAMS text columns whose every value is known: the registered architectures and data loaders."""
    return {"architecture": tuple(ARCHITECTURES.names()), "data": tuple(DATA_LOADERS.names())}


def _build_trainer(config: dict, data: BaseDataLoader, model: BaseModel, run_dir: Path, dist_info: DistInfo,
                   logger: logging.Logger, checkpoint: dict | None, checkpoint_path: str | Path | None,
                   finetune: bool, options: RunOptions, hparams: HparamsEntry) -> Trainer:
    """Device, weights, optimizers, TensorBoard and the Trainer, resumed from `checkpoint` unless fine-tuning."""
    device, device_ids = prepare_device(config["n_gpu"], dist_info, logger)
    model.to(device)
    if finetune:
        load_model_weights(model, checkpoint)
        logger.info("fine-tuning from the weights of %s", checkpoint_path)
    logger.debug("%s", model)
    optimizers, schedulers = build_optimizers(model, config)
    writer = TensorboardWriter(run_dir, config["trainer"]["tensorboard"] and dist_info.is_main)
    context = TrainerContext(device, logger, run_dir, dist_info, device_ids, writer, hparams,
                             options.console)
    trainer = Trainer(model, optimizers, schedulers, data, config, context, options.after_epoch)
    if checkpoint is not None and not finetune:
        trainer.load_state_dict(checkpoint)
        logger.info("resumed at epoch %d (global step %d)", checkpoint["epoch"], checkpoint["global_step"])
    return trainer


def resolve_device(spec: str) -> torch.device:
    """test.py's --device: auto (CUDA when available), cpu, cuda or cuda:N."""
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
    for name, value in metric_values(results, metrics).items():  # on the training curves' tags: they overlay
        writer.test.add_scalar(curve_tag(name, model.unit), value, step)
    writer.test.add_text("test_metrics", "\n".join("    " + line for line in format_table(results).splitlines()), step)
    vis = loader.dataset.__getitems__(list(range(min(model.visualization_size, len(loader.dataset)))))
    figures = FigureWriter(writer.test, run_dir / "figures", lambda tag: f"{file_stem(tag)}.png",
                           caption=f"test, epoch {checkpoint['epoch']}")
    with torch.no_grad():
        model.visualize(figures, move_to(vis, torch_device), step, "test")
    writer.close()
    return results


def metric_values(results: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, float]:
    """The numbers of `results` that the metrics reported (`elbo`, `elbo_per_sequence`, ...), for charts;
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
