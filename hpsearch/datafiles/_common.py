"""What every reader shares: the error, the field names errors use, the arrays as read, and the
limits that hold whatever a file claims."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hpsearch.errors import FieldError, InvalidSpecError

FileFormat = Literal["npz", "csv"]
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
PARTS = ("train", "val", "test")

# A text column with more distinct values is most likely an identifier or free text.
MAX_CATEGORIES = 100
# Features of a CSV once its text columns are one-hot encoded.
MAX_FEATURES = 100_000
# One value of a text column (a one-hot feature's name) or a class name.
MAX_TEXT_CHARS = 200

# Memory while checking: an .npz member is read this many decompressed bytes at a time, a CSV
# this many bytes of whole rows at a time (each row at most MAX_CSV_ROW_BYTES, the header at most
# MAX_CSV_HEADER_BYTES); nothing else grows with the file. See ``check_file``.
NPZ_BLOCK_BYTES = 8 << 20
CSV_BLOCK_BYTES = 2 << 20
MAX_CSV_ROW_BYTES = 8 << 20
MAX_CSV_HEADER_BYTES = 1 << 20
# With a size limit (the service's checks): an .npz member that decompresses to more than
# RATIO_FLOOR_BYTES at more than MAX_COMPRESSION_RATIO times its compressed size is refused from
# the archive's directory, before any of it is decompressed. Real data compresses far less
# (float32 noise about 1.1x, images 5-10x); 1,000x is a member of zeros.
MAX_COMPRESSION_RATIO = 200
RATIO_FLOOR_BYTES = 64 << 20


class DatasetError(InvalidSpecError):
    """A dataset that cannot be loaded or fails its checks (shapes, dtypes, labels, NaN/inf)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__([FieldError(field, reason)])


@dataclass(frozen=True)
class Fields:
    """The names errors give to the file and to its label column (an upload's form fields, or a
    study spec's ``dataset.path`` and ``dataset.label_column``)."""

    file: str = "dataset.path"
    label_column: str = "dataset.label_column"


@dataclass
class RawArrays:
    """Arrays as read, before splitting and scaling; ``pixel_max`` set for known image data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    pixel_max: float | None = None
    class_names: list[str] | None = None  # csv labels given as names, in class-number order
    features: list[str] | None = None  # csv feature names, after one-hot encoding


def file_format(name: str) -> FileFormat | None:
    """``"npz"`` or ``"csv"`` from a file name's suffix (any case); ``None`` for anything else."""
    suffix = Path(name).suffix.lower()
    return "npz" if suffix == ".npz" else "csv" if suffix == ".csv" else None
