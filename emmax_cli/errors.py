"""Errors raised by the library. The CLI turns them into one line on stderr and exit code 1."""

from __future__ import annotations


class EmmaxError(Exception):
    """A user-facing error: what went wrong, and (optionally) how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(EmmaxError):
    """Missing, empty, undecodable or mismatched input data."""


class ModelLoadError(EmmaxError):
    """A model name or directory that cannot be loaded."""


class IndexError_(EmmaxError):
    """A FAISS index that cannot be read or does not match its embeddings."""


class ConfigError(EmmaxError):
    """A bad training or evaluation configuration."""
