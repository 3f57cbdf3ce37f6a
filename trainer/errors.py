"""The trainer's errors. Each one is raised before training starts, and names what is wrong."""

from __future__ import annotations

from hpsearch.errors import FieldError, InvalidSpecError


class DatasetError(InvalidSpecError):
    """A dataset that cannot be loaded or fails its checks (shapes, dtypes, labels, NaN/inf)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__([FieldError(field, reason)])


class IncompatibleModelError(InvalidSpecError):
    """Parameters that are valid alone but cannot be applied to this dataset (cnn on a table)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__([FieldError(field, reason)])
