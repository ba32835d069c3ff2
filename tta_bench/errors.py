"""Exceptions whose message is meant for the user: the CLI prints them without a traceback."""

from __future__ import annotations


class TTABenchError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(TTABenchError):
    """An invalid configuration value."""


class DataNotFoundError(TTABenchError):
    """Data set files are missing or malformed."""
