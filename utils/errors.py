"""User-facing error types: the CLIs print their message on one line and exit with status 2."""


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
