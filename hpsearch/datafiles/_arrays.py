"""The checks every dataset passes, on arrays in memory (the trainer) or fed a block at a time
(the service, streaming an upload). Both paths raise the same errors in the same order, so that
the two halves agree on every file: shapes and dtypes first (what a file's headers say), then,
part by part, the inputs' finiteness and the labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpsearch.datafiles._common import PARTS, DatasetError, RawArrays

# One array's (shape, dtype), keyed by its name: what an .npz member's header says.
Layout = Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]
_CHUNK = 1 << 22  # elements per finiteness check: bounds the temporary to 4 MB
# Labels lie below this even where no ``max_classes`` bounds them (a path dataset, which the
# trainer checks): a softmax over more classes fits no worker, and the class counts, the split's
# bincount and the model's last layer are all as long as the largest label.
CLASS_CEILING = 1_000_000


def check_layout(layout: Layout, field: str) -> tuple[str, ...]:
    """The shape and dtype checks (no data needed); the parts present, ``train`` first."""
    parts = []
    for part in PARTS:
        if f"x_{part}" not in layout or f"y_{part}" not in layout:
            continue
        (xs, xd), (ys, yd) = layout[f"x_{part}"], layout[f"y_{part}"]
        if xd.kind not in "biuf":
            raise DatasetError(field, f"x_{part} must be numeric, got dtype {xd}")
        if len(xs) < 2 or len(xs) > 4:
            raise DatasetError(
                field, f"x_{part} must have 2 to 4 dimensions (examples first), got shape {xs}"
            )
        if not (len(ys) == 1 or (len(ys) == 2 and ys[1] == 1)):
            raise DatasetError(field, f"y_{part} must be one label per example, got shape {ys}")
        if xs[0] != ys[0]:
            raise DatasetError(
                field, f"x_{part} has {xs[0]} examples but y_{part} has {ys[0]} labels"
            )
        if xs[0] == 0:
            raise DatasetError(field, f"x_{part} is empty")
        if yd.kind not in "biuf":
            raise DatasetError(field, f"y_{part} must hold integer class labels, got dtype {yd}")
        if part != "train" and xs[1:] != layout["x_train"][0][1:]:
            raise DatasetError(
                field,
                f"x_{part} examples have shape {xs[1:]} but x_train's have "
                f"{layout['x_train'][0][1:]}",
            )
        parts.append(part)
    return tuple(parts)


def count_nonfinite(x: np.ndarray) -> int:
    """How many NaN or infinite values ``x`` holds, checked in chunks (no full-size temporary)."""
    if x.dtype.kind != "f":
        return 0
    flat = x.reshape(-1)
    return sum(
        int(np.count_nonzero(~np.isfinite(flat[i : i + _CHUNK])))
        for i in range(0, flat.size, _CHUNK)
    )


class LabelStats:
    """What the checks need of one part's labels, fed a block at a time: integrality, the lowest
    and highest label, and how many examples each class has."""

    def __init__(self, part: str, max_classes: int | None) -> None:
        self.part, self.max_classes = part, max_classes
        self.fractional = False
        self.low: float | None = None
        self.high: float | None = None
        self._counts = np.zeros(max_classes or 0, np.int64)
        self._other: dict[int, int] = {}  # counts when no max_classes bounds the labels

    def add(self, y: np.ndarray) -> None:
        """Take the next block of labels."""
        y = y.reshape(-1)
        if y.size == 0 or self.fractional:
            return
        if y.dtype.kind == "f" and (
            not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all()
        ):
            self.fractional = True  # the first check fails, whatever the other labels are
            return
        low, high = y.min().item(), y.max().item()
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        if self.max_classes is not None:
            valid = y[(y >= 0) & (y < self.max_classes)].astype(np.int64)
            self._counts += np.bincount(valid, minlength=self.max_classes)
            return
        values, counts = np.unique(y[(y >= 0) & (y < 2**62)].astype(np.int64), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            self._other[v] = self._other.get(v, 0) + c

    def finish(self, field: str) -> None:
        """Raise the first label check that fails, as ``check_arrays`` does."""
        part, low, high = self.part, self.low, self.high
        if self.fractional:
            raise DatasetError(field, f"y_{part} must hold integer class labels")
        if low is not None and low < 0:
            raise DatasetError(
                field, f"y_{part} holds a negative label ({int(low)}); labels start at 0"
            )
        bound = CLASS_CEILING if self.max_classes is None else self.max_classes
        if high is not None and high >= bound:
            raise DatasetError(
                field,
                f"y_{part} holds the label {int(high)}; labels must be integers in "
                f"[0, {bound - 1}] (at most {bound} classes)",
            )

    def labels(self) -> set[int]:
        """The labels seen at least once."""
        if self.max_classes is not None:
            return set(np.flatnonzero(self._counts).tolist())
        return {v for v, c in self._other.items() if c}

    def counts(self, n_classes: int) -> np.ndarray:
        """Examples per class, ``0 .. n_classes - 1``."""
        if self.max_classes is not None:
            return self._counts[:n_classes].copy()
        out = np.zeros(n_classes, np.int64)
        for v, c in self._other.items():
            if v < n_classes:
                out[v] = c
        return out


def check_classes(stats: Mapping[str, LabelStats], field: str) -> int:
    """The number of classes, once every part's labels passed; at least 2, and no validation or
    test label that training never sees."""
    n_classes = int(max(int(s.high or 0) for s in stats.values()) + 1)
    if n_classes < 2:
        raise DatasetError(field, "the labels must cover at least 2 classes")
    seen = stats["train"].labels()
    for part, s in stats.items():
        missing = sorted(s.labels() - seen)
        if missing:
            raise DatasetError(
                field, f"y_{part} holds label(s) {missing[:5]} never seen in y_train"
            )
    return n_classes


def summary_of(
    shapes: Mapping[str, list[int]],
    n_classes: int,
    class_counts: list[int],
    class_names: list[str] | None = None,
    features: list[str] | None = None,
) -> dict[str, object]:
    """Shapes, classes and features, as the API shows them."""
    return {
        "shapes": dict(shapes),
        "classes": n_classes,
        "class_names": class_names,
        "class_counts": class_counts,
        "features": features,
    }


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
        counts = np.bincount(self.y["train"], minlength=self.n_classes).tolist()
        return summary_of(shapes, self.n_classes, counts, self.raw.class_names, self.raw.features)


def check_arrays(
    raw: RawArrays, field: str = "dataset.path", max_classes: int | None = None
) -> CheckedArrays:
    """Every check a dataset must pass before training on it; raise ``DatasetError`` if one
    fails. ``max_classes`` bounds the labels (``[0, max_classes)``)."""
    layout: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    for part in PARTS:
        x, y = getattr(raw, f"x_{part}"), getattr(raw, f"y_{part}")
        if x is not None and y is not None:
            layout[f"x_{part}"], layout[f"y_{part}"] = (x.shape, x.dtype), (y.shape, y.dtype)
    parts = check_layout(layout, field)
    stats: dict[str, LabelStats] = {}
    for part in parts:
        bad = count_nonfinite(getattr(raw, f"x_{part}"))
        if bad:
            raise DatasetError(field, f"x_{part} holds {bad} NaN or infinite value(s)")
        stats[part] = LabelStats(part, max_classes)
        stats[part].add(getattr(raw, f"y_{part}"))
        stats[part].finish(field)
    n_classes = check_classes(stats, field)
    y = {part: getattr(raw, f"y_{part}").reshape(-1).astype(np.int64) for part in parts}
    return CheckedArrays(raw, y, n_classes, parts)
