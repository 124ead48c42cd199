"""Train an architecture from a config.

    python train.py -c configs/vae_pinwheel.yaml [--set key.path=value ...] [--lr --bs --epochs --seed]
    python train.py -r saved/<name>/<run>/checkpoints/last.pt [--set trainer.epochs=N]   # resume / extend
    python train.py -r CKPT -c CONFIG      # fine-tune: CKPT's weights, CONFIG's everything else, new run
    python train.py -d 2,3 -c CONFIG       # GPUs 2 and 3 (DataParallel); torchrun ... train.py for DDP
    python train.py -c CONFIG --dry-run    # build the data and the model, print what they are, write nothing
"""
from __future__ import annotations

from utils.versions import require_minimum_versions

require_minimum_versions()  # before the imports that fail on an older torch

import logging  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from base.base_data_loader import BaseDataLoader  # noqa: E402
from base.base_model import BaseModel  # noqa: E402
from base.base_trainer import load_model_weights  # noqa: E402
from logger import TensorboardWriter, setup_logging  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.build import build_data, build_model, describe_run, eval_metric_names, load_and_check  # noqa: E402
from trainer.optim import build_optimizers  # noqa: E402
from utils.checkpoint import load_checkpoint, run_dir_of  # noqa: E402
from utils.cli import ArgumentParser, run_main, short_flag_overrides  # noqa: E402
from utils.device import device_spec, prepare_device, set_visible_devices  # noqa: E402
from utils.distributed import DistInfo, broadcast_object, init_distributed, shutdown_distributed  # noqa: E402
from utils.errors import CheckpointError, ConfigError  # noqa: E402
from utils.run_dir import check_save_dir, new_run_dir, removed_on_failure, write_run_files  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


@dataclass
class TrainResult:
    run_dir: Path | None
    metrics: dict[str, float]


@dataclass
class RunOptions:
    """How a program that trains many runs (sweep.py) places and watches one.

    run_dir: the new run's folder (made here; it must not exist) instead of save_dir/<name>/<run_id>.
    on_epoch_end: called as on_epoch_end(epoch, log) after each epoch, before its checkpoints are
        written; returning True ends training after that epoch's checkpoints (early stopping, pruning).
    hparams: extra HPARAMS columns for TensorBoard (e.g. the swept config keys).
    console: log to the console (off: the run's train.log only, no progress bars).
    """

    run_dir: Path | None = None
    on_epoch_end: Callable[[int, dict[str, float]], bool] | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
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
    eval_metric_names(config, model, data)  # so does a metric whose field the data lacks
    if new_run and dist_info.is_main:
        run_dir = new_run_dir(config["trainer"]["save_dir"], config["name"], options.run_dir)
    run_dir = broadcast_object(run_dir)
    with removed_on_failure(run_dir, enabled=new_run and dist_info.is_main):
        logger = setup_logging(run_dir / "train.log", config["trainer"]["verbosity"], dist_info.is_main,
                               console=options.console)
        if dist_info.is_main:
            write_run_files(run_dir, config, keep_environment=resume)
            logger.info("%s run %s", "resuming" if resume else "starting", run_dir)
        trainer = _build_trainer(config, data, model, run_dir, dist_info, logger, checkpoint, checkpoint_path,
                                 finetune)
        trainer.on_epoch_end = options.on_epoch_end
        trainer.hparams.update(options.hparams)
        trainer.show_progress = trainer.show_progress and options.console
    return TrainResult(run_dir, trainer.fit())


def _build_trainer(config: dict, data: BaseDataLoader, model: BaseModel, run_dir: Path, dist_info: DistInfo,
                   logger: logging.Logger, checkpoint: dict | None, checkpoint_path: str | Path | None,
                   finetune: bool) -> Trainer:
    """Device, weights, optimizers, TensorBoard and the Trainer, resumed from `checkpoint` unless fine-tuning."""
    device, device_ids = prepare_device(config["n_gpu"], dist_info, logger)
    model.to(device)
    if finetune:
        load_model_weights(model, checkpoint)
        logger.info("fine-tuning from the weights of %s", checkpoint_path)
    logger.debug("%s", model)
    optimizers, schedulers = build_optimizers(model, config)
    writer = TensorboardWriter(run_dir, config["trainer"]["tensorboard"] and dist_info.is_main)
    trainer = Trainer(model, optimizers, schedulers, config, data, device, device_ids, run_dir, dist_info,
                      logger, writer)
    if checkpoint is not None and not finetune:
        trainer.load_state_dict(checkpoint)
        logger.info("resumed at epoch %d (global step %d)", checkpoint["epoch"], checkpoint["global_step"])
    return trainer


def dry_run(config: dict) -> None:
    """Build the data and the model as training would and print what they are; nothing is written."""
    seed_everything(config["seed"])
    data = build_data(config)
    print(describe_run(config, data, build_model(config, data)))


def config_from_args(args) -> tuple[dict, dict | None]:
    """The config to train with and the checkpoint (None without -r)."""
    overrides = list(args.set) + short_flag_overrides(args)
    if args.resume is None and args.config is None:
        raise ConfigError("give a config (-c CONFIG) or a checkpoint to resume (-r CHECKPOINT)")
    checkpoint = load_checkpoint(args.resume) if args.resume is not None else None
    if args.config is not None:
        config = load_and_check(args.config, overrides, lr=args.lr)
        if checkpoint is not None and checkpoint["arch"] != config["arch"]["type"]:
            raise CheckpointError(
                f"checkpoint {args.resume} is from architecture {checkpoint['arch']!r}, the config asks "
                f"for {config['arch']['type']!r}"
            )
    else:
        config = load_and_check(base=checkpoint["config"], overrides=overrides, lr=args.lr)
    return config, checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="config file (.json or .yaml)")
    parser.add_argument("-r", "--resume", help="checkpoint to resume (alone) or fine-tune from (with -c)")
    parser.add_argument("-d", "--device", type=device_spec,
                        help="GPUs to use, e.g. 2,3 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optimizer.args.lr=3e-4 (value parsed as YAML)")
    parser.add_argument("--lr", type=float, help="learning rate of every optimizer: optimizer.args.lr, or "
                                                  "optimizer.<group>.args.lr of every group of a per-group optimizer")
    parser.add_argument("--bs", type=int, help="batch size (data_loader.args.batch_size)")
    parser.add_argument("--epochs", type=int, help="number of epochs (trainer.epochs)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the data and the model, print the data summary, the parameter count and the "
                             "metrics, and exit without writing anything")
    args = parser.parse_args(argv)
    if args.device is not None:  # before anything initialises CUDA
        args.set.append(f"n_gpu={set_visible_devices(args.device)}")

    def run() -> None:
        config, checkpoint = config_from_args(args)
        if args.dry_run:
            dry_run(config)
            return
        train(config, checkpoint, args.resume, finetune=args.config is not None and checkpoint is not None)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
