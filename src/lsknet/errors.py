"""One exception hierarchy for user-facing errors.

The CLI turns every :class:`LSKNetError` into a one-line message and exit code 2.
Programming errors (bugs) stay ordinary Python exceptions with tracebacks.
"""

from __future__ import annotations


class LSKNetError(Exception):
    """Base class of all errors caused by user input (files, configs, arguments)."""


class ConfigError(LSKNetError, ValueError):
    """Unknown preset, bad override key or value, inconsistent configuration."""


class CheckpointError(LSKNetError):
    """Missing checkpoint file, wrong layout, wrong variant, missing or mismatched keys."""


class DatasetFormatError(LSKNetError, ValueError):
    """A data file on disk does not follow its format (names the file and, where known, the line)."""


class DataSkipWarning(UserWarning):
    """Warned when a bad sample is skipped; ``--strict`` turns it into a :class:`DatasetFormatError`."""
