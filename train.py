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

import sys  # noqa: E402

from trainer.components import build_data, build_model, describe_run, load_and_check  # noqa: E402
from trainer.jobs import train  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.cli import ArgumentParser, run_main, short_flag_overrides  # noqa: E402
from utils.device import device_spec, set_visible_devices  # noqa: E402
from utils.errors import CheckpointError, ConfigError  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


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
