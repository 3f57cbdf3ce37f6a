"""Reading and checking a user's dataset file (``.npz`` or ``.csv``), shared by both halves.

The service runs these checks when a file is uploaded, before anything is stored; the trainer runs
the same ones when it loads a file, so that a file the service accepted always loads. Nothing
here unpickles: ``.npz`` files are opened with ``allow_pickle=False`` and their headers are read
before any array, so that an object array or a "zip bomb" is refused without being loaded.

CSV files: every column but the label is a feature. Numeric columns are used as they are; text
(and other non-numeric) columns are one-hot encoded, one ``column=value`` feature per distinct
value in sorted order, up to ``MAX_CATEGORIES`` values per column (a column with more is most
likely an identifier or free text, and is refused). Missing or non-finite values are refused,
naming the column and line. Labels are integers, or class names numbered in sorted order.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hpsearch.errors import FieldError, InvalidSpecError

FileFormat = Literal["npz", "csv"]
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
MAX_CATEGORIES = 100
_CHUNK = 1 << 22  # elements per finiteness check: bounds the temporary to 4 MB


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


@dataclass
class CheckedArrays:
    """``RawArrays`` that passed every check: labels as int64, the number of classes."""

    raw: RawArrays
    y: dict[str, np.ndarray]  # "train", and "val"/"test" when the file has them
    n_classes: int
    parts: tuple[str, ...] = field(default=("train",))

    def summary(self) -> dict[str, object]:
        """Shapes, classes and features, as the API shows them."""
        shapes: dict[str, list[int]] = {}
        for part in self.parts:
            shapes[f"x_{part}"] = list(getattr(self.raw, f"x_{part}").shape)
            shapes[f"y_{part}"] = [len(self.y[part])]
        return {
            "shapes": shapes,
            "classes": self.n_classes,
            "class_names": self.raw.class_names,
            "class_counts": np.bincount(self.y["train"], minlength=self.n_classes).tolist(),
            "features": self.raw.features,
        }


def file_format(name: str) -> FileFormat | None:
    """``"npz"`` or ``"csv"`` from a file name's suffix (any case); ``None`` for anything else."""
    suffix = Path(name).suffix.lower()
    return "npz" if suffix == ".npz" else "csv" if suffix == ".csv" else None


def read_file(
    path: Path,
    fmt: FileFormat,
    label_column: str = "label",
    fields: Fields = Fields(),
    max_array_bytes: int | None = None,
    shown_name: str | None = None,
) -> RawArrays:
    """Read ``path`` as ``fmt``; raise ``DatasetError`` naming the field and the reason.

    ``max_array_bytes`` bounds the arrays' total size in memory (an ``.npz`` is compressed: a
    small file may hold huge arrays); ``shown_name`` is the name errors use for the file.
    """
    name = shown_name or path.name
    if not path.is_file():
        raise DatasetError(fields.file, f"no such file: {path}")
    if fmt == "csv":
        return _read_csv(path, name, label_column, fields)
    arrays = _read_npz(path, name, fields.file, max_array_bytes)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DatasetError(fields.file, f"{name}: missing the array {key!r}")
    for part in ("val", "test"):
        if (f"x_{part}" in arrays) != (f"y_{part}" in arrays):
            raise DatasetError(fields.file, f"{name}: x_{part} and y_{part} must be given together")
    get = arrays.get
    return RawArrays(
        arrays["x_train"],
        arrays["y_train"],
        get("x_val"),
        get("y_val"),
        get("x_test"),
        get("y_test"),
    )


def read_npz(path: Path, field: str, max_array_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (only the known names), checked before they are loaded."""
    return _read_npz(path, path.name, field, max_array_bytes)


def _read_npz(
    path: Path, name: str, field: str, max_array_bytes: int | None
) -> dict[str, np.ndarray]:
    def bad(reason: str) -> DatasetError:
        return DatasetError(field, f"{name}: {reason}")

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            keys = [m.filename.removesuffix(".npy") for m in members]
            unknown = sorted(set(keys) - set(NPZ_KEYS))
            if unknown:
                raise bad(f"unknown array(s) {', '.join(unknown)}; expected {', '.join(NPZ_KEYS)}")
            total = 0
            for member, key in zip(members, keys, strict=True):
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise bad(
                        f"{key} holds Python objects (a pickled object array); "
                        "only numeric arrays are accepted"
                    )
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if max_array_bytes is not None and total > max_array_bytes:
                raise bad(
                    f"its arrays take {total:,} bytes once decompressed; "
                    f"the limit is {max_array_bytes:,}"
                )
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(field, f"no such file: {path}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        if "allow_pickle" in str(exc):
            raise bad(
                "holds Python objects (a pickled object array); only numeric arrays are accepted"
            ) from None
        raise bad(f"not a readable .npz file (truncated or corrupt: {exc})") from None


def _read_csv(path: Path, name: str, label_column: str, fields: Fields) -> RawArrays:
    import pandas as pd

    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(fields.file, f"{name}: not a readable CSV file ({exc})") from None
    if label_column not in frame.columns:
        raise DatasetError(
            fields.label_column,
            f"{name} has no column {label_column!r}; columns: "
            f"{', '.join(map(str, frame.columns[:20]))}{' ...' if frame.shape[1] > 20 else ''}",
        )
    if len(frame) == 0:
        raise DatasetError(fields.file, f"{name}: no rows beside the header")
    labels = frame.pop(label_column)
    if frame.shape[1] == 0:
        raise DatasetError(fields.file, f"{name}: no feature columns beside the label")

    def line_of(mask: object) -> int:
        return int(np.flatnonzero(np.asarray(mask))[0]) + 2  # line 1 is the header

    missing = labels.isna()
    if missing.any():
        raise DatasetError(
            fields.label_column,
            f"{name}: {int(missing.sum())} row(s) have no label in {label_column!r} "
            f"(first on line {line_of(missing)})",
        )
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    for column in frame.columns:
        values = frame[column]
        if column in categorical:
            bad = values.isna()
            what = "missing"
        else:
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(numbers)
            what = "missing or non-finite (NaN, inf)"
        if bad.any():
            raise DatasetError(
                fields.file,
                f"{name}: column {column!r} has {int(bad.sum())} {what} value(s) "
                f"(first on line {line_of(bad)})",
            )
    for column in categorical:
        n = frame[column].nunique()
        if n > MAX_CATEGORIES:
            raise DatasetError(
                fields.file,
                f"{name}: text column {column!r} has {n:,} distinct values; at most "
                f"{MAX_CATEGORIES} are one-hot encoded (drop it, or encode it as numbers)",
            )
    if categorical:
        frame = frame.astype({c: "str" for c in categorical})
        frame = pd.get_dummies(frame, columns=categorical, prefix_sep="=", dtype=np.float32)
    class_names = None
    if pd.api.types.is_numeric_dtype(labels):
        y = labels.to_numpy()
    else:  # class names: numbered in sorted order
        names, y = np.unique(labels.astype(str).to_numpy(), return_inverse=True)
        class_names = [str(n) for n in names]
    return RawArrays(
        frame.to_numpy(dtype=np.float32),
        y,
        class_names=class_names,
        features=[str(c) for c in frame.columns],
    )


def _all_finite(x: np.ndarray) -> int:
    """How many NaN or infinite values ``x`` holds, checked in chunks (no full-size temporary)."""
    flat = x.reshape(-1)
    return sum(
        int(np.count_nonzero(~np.isfinite(flat[i : i + _CHUNK])))
        for i in range(0, flat.size, _CHUNK)
    )


def _check_pair(
    x: np.ndarray, y: np.ndarray, part: str, field: str, max_classes: int | None
) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DatasetError(field, f"x_{part} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4:
        raise DatasetError(
            field, f"x_{part} must have 2 to 4 dimensions (examples first), got shape {x.shape}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(field, f"y_{part} must be one label per example, got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(
            field, f"x_{part} has {len(x)} examples but y_{part} has {len(y)} labels"
        )
    if len(x) == 0:
        raise DatasetError(field, f"x_{part} is empty")
    if x.dtype.kind == "f":
        bad = _all_finite(x)
        if bad:
            raise DatasetError(field, f"x_{part} holds {bad} NaN or infinite value(s)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
            raise DatasetError(field, f"y_{part} must hold integer class labels")
    elif y.dtype.kind not in "biu":
        raise DatasetError(field, f"y_{part} must hold integer class labels, got dtype {y.dtype}")
    low, high = y.min(), y.max()
    if low < 0:
        raise DatasetError(
            field, f"y_{part} holds a negative label ({int(low)}); labels start at 0"
        )
    if max_classes is not None and high >= max_classes:
        raise DatasetError(
            field,
            f"y_{part} holds the label {int(high)}; labels must be integers in "
            f"[0, {max_classes - 1}] (at most {max_classes} classes)",
        )
    return y.astype(np.int64)


def check_arrays(
    raw: RawArrays, field: str = "dataset.path", max_classes: int | None = None
) -> CheckedArrays:
    """Every check a dataset must pass before training on it; raise ``DatasetError`` if one
    fails. ``max_classes`` bounds the labels (``[0, max_classes)``)."""
    y = {"train": _check_pair(raw.x_train, raw.y_train, "train", field, max_classes)}
    parts = ["train"]
    for part in ("val", "test"):
        x, labels = getattr(raw, f"x_{part}"), getattr(raw, f"y_{part}")
        if x is None or labels is None:
            continue
        y[part] = _check_pair(x, labels, part, field, max_classes)
        if x.shape[1:] != raw.x_train.shape[1:]:
            raise DatasetError(
                field,
                f"x_{part} examples have shape {x.shape[1:]} but x_train's have "
                f"{raw.x_train.shape[1:]}",
            )
        parts.append(part)
    n_classes = int(max(int(labels.max()) for labels in y.values()) + 1)
    if n_classes < 2:
        raise DatasetError(field, "the labels must cover at least 2 classes")
    seen = set(np.unique(y["train"]).tolist())
    for part in parts[1:]:
        missing = sorted(set(np.unique(y[part]).tolist()) - seen)
        if missing:
            raise DatasetError(
                field, f"y_{part} holds label(s) {missing[:5]} never seen in y_train"
            )
    return CheckedArrays(raw, y, n_classes, tuple(parts))
