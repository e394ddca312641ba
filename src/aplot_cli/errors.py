"""Typed errors for user mistakes: each carries an exit code and a hint, and the CLI prints them
without a traceback. Exit codes are documented in the README."""

from __future__ import annotations


class AplotError(Exception):
    """Base class: a message for people, a hint saying how to fix it, and a process exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(AplotError):
    """A flag, YAML key or value is wrong."""

    exit_code = 2


class InputDataError(AplotError):
    """Input data (a file, a row, a column) is malformed."""

    exit_code = 3


class ArtifactError(AplotError):
    """An input artifact directory is missing, unfinished, damaged, or of the wrong stage; or an output
    directory may not be written (not empty, another stage's or not aplot's, an input, a link)."""

    exit_code = 4


class ModelError(AplotError):
    """A model or tokenizer cannot be found or loaded."""

    exit_code = 5


class TrainingError(AplotError):
    """Training or evaluation failed for a reason a user can act on (e.g. NaN loss)."""

    exit_code = 6


class HubUnreachableError(AplotError):
    """A hub dataset or model is needed, the Hugging Face Hub cannot be reached, and it is not cached."""

    exit_code = 7
