"""User-facing errors: the runner prints their message (no traceback unless debug=true)."""


class SdclrError(Exception):
    """A problem with the user's input that has a clear fix; the message says both."""


class ConfigError(SdclrError):
    """An impossible or inconsistent configuration value."""


class DataError(SdclrError):
    """Missing, corrupt or inconsistent data or split files."""


class CheckpointError(SdclrError):
    """A checkpoint that is missing or does not fit the requested model."""


class TrainingError(SdclrError):
    """Training cannot go on (for example a non-finite loss)."""


class JobBusyError(SdclrError):
    """The job directory is held by another run (its files belong to that run)."""
