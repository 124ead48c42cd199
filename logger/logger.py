"""Logging to the console and to a log file in the run folder (rank 0 only)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.errors import OutputWriteError


class _LogFile(logging.FileHandler):
    """A log file whose failed writes (a full disk) raise OutputWriteError; logging's default
    prints a traceback and carries on without the log."""

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise OutputWriteError(self.baseFilename, err) from None
        super().handleError(record)


LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(log_file: Path | None, verbosity: int = 1, is_main: bool = True,
                  console: bool = True) -> logging.Logger:
    """The project logger: console (stdout, unless `console` is off) and `log_file`; other ranks log
    warnings only."""
    logger = logging.getLogger("vaeframe")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS[verbosity] if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if console:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_file is not None and is_main:
        try:
            file_handler = _LogFile(log_file)
        except OSError as err:
            raise OutputWriteError(log_file, err) from None
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger
