"""Exception types raised on bad user input; the CLI turns them into a one-line error and exit code 2."""

from __future__ import annotations


class AdvmlError(Exception):
    """Base class of every error advml raises about its inputs."""


class ConfigError(AdvmlError, ValueError):
    """A setting is unknown, out of range or inconsistent with another one."""

    def __init__(self, message: str, issues: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or []  # (dotted key, "unknown" | "value", text): lets outer settings add their path


class UnknownNameError(ConfigError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(AdvmlError, ValueError):
    """A data file is missing, corrupt or holds arrays of the wrong shape or type."""


class InputError(AdvmlError, ValueError):
    """A tensor given to an attack, trigger or metric has the wrong shape, dtype or range."""


class UnsafeFileError(AdvmlError, ValueError):
    """A file would have to be unpickled (or otherwise executed) to be loaded."""


class NumericalError(AdvmlError, FloatingPointError):
    """Training diverged (a NaN or inf loss): a setting such as the learning rate is too large."""


class OutputError(AdvmlError):
    """A result could not be written: the disk is full, the folder read-only or not ours to write."""
