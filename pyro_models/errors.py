"""Exception types raised at the package boundary.

Each subclasses the built-in a user would ``except`` on (``ValueError``, ``KeyError``,
``TypeError``, ``FloatingPointError``), so plain ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataValidationError", "UnknownNameError", "NonFiniteLossError"]


class DataValidationError(ValueError):
    """Data does not satisfy a model's data contract (shape, dtype, NaN/inf, unknown key)."""


class UnknownNameError(KeyError):
    """A registry lookup failed; the message lists what is available."""

    def __str__(self) -> str:  # KeyError would repr() the message and escape newlines
        return str(self.args[0]) if self.args else ""


class NonFiniteLossError(FloatingPointError):
    """SVI produced a NaN/inf loss. ``result`` holds the fit at the last finite step."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
