"""Errors a user can act on. Each message names the file, id or option at fault."""


class EmbedcacheError(Exception):
    """Base class: the CLI prints these as one clean line and exits with status 1."""


class CacheError(EmbedcacheError):
    """An embedding cache is missing, incomplete, inconsistent or of another recipe."""


class DatasetError(EmbedcacheError):
    """A dataset's files or metadata cannot be read as the adapter expects."""


class BackboneError(EmbedcacheError):
    """A backbone or its weights cannot be created or loaded."""


class ConfigError(EmbedcacheError):
    """An option or a combination of options is invalid."""
