"""Domain errors. They carry no HTTP; ``service.api.errors`` maps them to status codes."""

from __future__ import annotations

from hpsearch.errors import FieldError, InvalidSpecError

__all__ = ["AlreadyExistsError", "ConflictError", "FieldError", "InvalidSpecError", "NotFoundError"]


class NotFoundError(LookupError):
    """A study or trial that does not exist (or no longer does)."""


class AlreadyExistsError(ValueError):
    """A name that is already taken."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class ConflictError(RuntimeError):
    """An operation the resource's state forbids: a tell for a finished trial, a lost lease."""
