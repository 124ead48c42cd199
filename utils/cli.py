"""Command-line plumbing shared by train.py, test.py and the benchmarks."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from utils.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def run_main(main: Callable[[], int | None]) -> int:
    """Run `main`; a UserError becomes one line on stderr and exit status 2."""
    try:
        return main() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def short_flag_overrides(args: argparse.Namespace) -> list[str]:
    """--bs/--epochs/--seed as `--set` overrides (they come after the --set ones); --lr is
    `load_config`'s `lr`, since where it goes depends on the optimizer spec."""
    flags = {"bs": "data_loader.args.batch_size", "epochs": "trainer.epochs", "seed": "seed"}
    return [f"{path}={getattr(args, name)}" for name, path in flags.items()
            if getattr(args, name, None) is not None]
