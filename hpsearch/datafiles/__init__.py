"""Reading and checking a user's dataset file (``.npz`` or ``.csv``), shared by both halves.

The service checks an upload with ``check_file`` before anything is stored; the trainer loads a
file with ``read_file`` and ``check_arrays``. Both run the same checks, in the same order, with
the same messages, so that a file the service accepted always loads. Nothing here unpickles:
``.npz`` files are opened with ``allow_pickle=False`` and their zip directory and array headers
are read before any array, so that an object array or a "zip bomb" is refused unread.

``check_file`` never holds a file whole: an ``.npz`` member is read ``NPZ_BLOCK_BYTES`` (8 MiB)
of decompressed data at a time, counted as it comes, and a CSV ``CSV_BLOCK_BYTES`` (2 MiB) of
whole rows at a time (rows of at most ``MAX_CSV_ROW_BYTES``, 8 MiB), so its memory stays within
a few tens of MB, whatever size the file claims (the API process, imports included, stays under
256 MB). With a size limit, it also refuses from the zip directory alone a member that claims
more than the limit, or that decompresses ``MAX_COMPRESSION_RATIO`` (200) times past 64 MiB.

CSV files: every column but the label is a feature. Numeric columns are used as they are; text
(and other non-numeric) columns are one-hot encoded, one ``column=value`` feature per distinct
value in sorted order, up to ``MAX_CATEGORIES`` values per column (a column with more is most
likely an identifier or free text, and is refused). Missing or non-finite values are refused,
naming the column and line. Labels are integers, or class names numbered in sorted order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpsearch.datafiles._arrays import CLASS_CEILING, CheckedArrays, check_arrays
from hpsearch.datafiles._common import (
    CSV_BLOCK_BYTES,
    MAX_CATEGORIES,
    MAX_COMPRESSION_RATIO,
    MAX_CSV_HEADER_BYTES,
    MAX_CSV_ROW_BYTES,
    MAX_FEATURES,
    MAX_TEXT_CHARS,
    NPZ_BLOCK_BYTES,
    NPZ_KEYS,
    RATIO_FLOOR_BYTES,
    DatasetError,
    Fields,
    FileFormat,
    RawArrays,
    file_format,
)
from hpsearch.datafiles._csv import check_csv, load_csv
from hpsearch.datafiles._npz import check_npz, load_npz

__all__ = [
    "CLASS_CEILING",
    "CSV_BLOCK_BYTES",
    "MAX_CATEGORIES",
    "MAX_COMPRESSION_RATIO",
    "MAX_CSV_HEADER_BYTES",
    "MAX_CSV_ROW_BYTES",
    "MAX_FEATURES",
    "MAX_TEXT_CHARS",
    "NPZ_BLOCK_BYTES",
    "NPZ_KEYS",
    "RATIO_FLOOR_BYTES",
    "CheckedArrays",
    "DatasetError",
    "Fields",
    "FileFormat",
    "RawArrays",
    "check_arrays",
    "check_file",
    "file_format",
    "read_file",
    "read_npz",
]


_DEFAULT_FIELDS = Fields()


def read_file(
    path: Path,
    fmt: FileFormat,
    label_column: str = "label",
    fields: Fields = _DEFAULT_FIELDS,
    max_array_bytes: int | None = None,
    shown_name: str | None = None,
) -> RawArrays:
    """Read ``path`` as ``fmt`` into memory; raise ``DatasetError`` naming the field and the
    reason. ``max_array_bytes`` bounds the arrays' total size in memory (an ``.npz`` is
    compressed: a small file may hold huge arrays); ``shown_name`` is the name errors use for the
    file. ``check_arrays`` runs the rest of the checks."""
    name = shown_name or path.name
    if not path.is_file():
        raise DatasetError(fields.file, f"no such file: {path}")
    if fmt == "csv":
        return load_csv(path, name, label_column, fields)
    arrays = load_npz(path, name, fields.file, max_array_bytes)
    get = arrays.get
    return RawArrays(
        arrays["x_train"],
        arrays["y_train"],
        get("x_val"),
        get("y_val"),
        get("x_test"),
        get("y_test"),
    )


def check_file(
    path: Path,
    fmt: FileFormat,
    label_column: str = "label",
    fields: Fields = _DEFAULT_FIELDS,
    max_array_bytes: int | None = None,
    max_classes: int | None = None,
    shown_name: str | None = None,
) -> dict[str, object]:
    """Every check of ``read_file`` and ``check_arrays``, streamed (memory bounded, see above):
    the dataset's summary (shapes, classes, class names and counts, features), as
    ``CheckedArrays.summary`` gives it; ``DatasetError`` naming the field and the reason.
    ``fields.file`` is also the field of the array checks."""
    name = shown_name or path.name
    if not path.is_file():
        raise DatasetError(fields.file, f"no such file: {path}")
    if fmt == "csv":
        return check_csv(path, name, label_column, fields, max_array_bytes, max_classes)
    return check_npz(path, name, fields.file, max_array_bytes, max_classes)


def read_npz(path: Path, field: str, max_array_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (only the known names), checked before they are loaded."""
    return load_npz(path, path.name, field, max_array_bytes)
