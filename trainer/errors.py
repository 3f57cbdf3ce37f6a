"""The trainer's errors. Each one is raised before training starts, and names what is wrong."""

from __future__ import annotations

from hpsearch.datafiles import DatasetError
from hpsearch.errors import FieldError, InvalidSpecError

__all__ = ["DatasetError", "IncompatibleModelError"]


class IncompatibleModelError(InvalidSpecError):
    """Parameters that are valid alone but cannot be applied to this dataset (cnn on a table)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__([FieldError(field, reason)])
