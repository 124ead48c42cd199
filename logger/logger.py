"""Logging to the console and to a log file in the run folder (rank 0 only)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(log_file: Path | None, verbosity: int = 1, is_main: bool = True) -> logging.Logger:
    """The project logger: console (stdout) and `log_file`; other ranks log warnings only."""
    logger = logging.getLogger("vaeframe")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS[verbosity] if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None and is_main:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger
