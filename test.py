"""Evaluate a checkpoint on the test split and write test_metrics.json into its run folder.

    python test.py -r saved/<name>/<run>/checkpoints/model_best.pt [--iw-samples 100] [--device cpu] [--bs N]
"""
from __future__ import annotations

from utils.versions import require_minimum_versions

require_minimum_versions()  # before the imports that fail on an older torch

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from base.metric import DEFAULT_OPTIONS  # noqa: E402
from trainer.jobs import evaluate, format_table  # noqa: E402
from utils.checkpoint import run_dir_of  # noqa: E402
from utils.cli import ArgumentParser, run_main  # noqa: E402


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
