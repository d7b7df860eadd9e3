"""Errors a user can fix: the CLI prints their message and exits with status 2."""


class UserError(Exception):
    """Bad input (a flag, a name, a missing file): the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset is missing or incomplete under --data-root."""


class DataError(DataNotFoundError):
    """A dataset file exists but its content is unusable (unreadable, malformed or inconsistent):
    the usable dataset is not there, so callers that catch DataNotFoundError catch this too."""
class WriteError(Exception):
    """Writing a run's files failed (disk full, quota, I/O error). Not the user's input: the CLI
    prints the message, which says what is intact and how to resume, and exits with status 1."""
