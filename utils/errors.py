"""User-facing error types: the CLIs print their message on one line and exit with status 2."""
import shutil
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (config, checkpoint, data, diverged training)."""


class ConfigError(UserError):
    """Invalid config: unknown key, wrong type, unknown name."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class DataError(UserError):
    """Data that is missing or malformed."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss."""


class OutputWriteError(UserError):
    """Writing a run's output (checkpoint, log, TensorBoard events, metrics) failed: a full disk, a
    read-only or vanished folder. `path` is the file or folder being written."""

    def __init__(self, path, reason: BaseException | str):
        if isinstance(reason, RuntimeError):  # torch.save's zip writer does not say why
            free = shutil.disk_usage(Path(path).parent).free / 2**20 if Path(path).parent.is_dir() else 0.0
            reason = f"the write failed ({' '.join(str(reason).split())[:120]}), {free:.1f} MiB free there"
        elif not isinstance(reason, str):
            reason = " ".join((getattr(reason, "strerror", None) or str(reason)).split())[:200]
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path}: {reason}")
