"""Errors a user can act on. Each message names the file, id or parameter at fault.

The library speaks of its own parameters, never of command-line flags: `param` names the
parameter at fault (`ConfigError("must be at least 1", param="seed_size")` reads
"seed_size: must be at least 1"), and other parameters a message mentions are written in
backticks ("pass `overwrite` to replace it"). The CLI shows both as the flags of the command
that was run ("--seed-size: must be at least 1", "pass --overwrite to replace it").
"""

from __future__ import annotations

import copy


class EmbedcacheError(Exception):
    """Base class: the CLI prints these as one clean line; data errors exit with status 1."""

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # kept by pickling (exceptions pickle their __dict__), so worker errors keep it

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def within(self, context: str) -> "EmbedcacheError":
        """The same error (class and parameter) with `context`, e.g. the file it concerns, before its message."""
        other = copy.copy(self)
        other.message = f"{context}: {self.message}"
        other.args = (other.message,)
        return other


class CacheError(EmbedcacheError):
    """An embedding cache is missing, incomplete, inconsistent or of another recipe."""


class DatasetError(EmbedcacheError):
    """A dataset's files or metadata cannot be read as the adapter expects."""


class BackboneError(EmbedcacheError):
    """A backbone or its weights cannot be created or loaded."""


class ConfigError(EmbedcacheError):
    """A parameter or a combination of parameters is invalid: the CLI treats it as a usage error (exit 2)."""
