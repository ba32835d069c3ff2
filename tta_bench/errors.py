"""Exceptions whose message is meant for the user: the CLI prints them without a traceback."""

from __future__ import annotations


class TTABenchError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(TTABenchError):
    """An invalid configuration value."""


class DataNotFoundError(TTABenchError):
    """Data set files are missing or malformed."""


class OutOfMemory(TTABenchError):
    """The device ran out of memory; the message names the batch size and the device."""


class Interrupted(TTABenchError):
    """A signal stopped the run after its state was checkpointed; running it again resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"
