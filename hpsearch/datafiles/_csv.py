"""CSV files, read a block of whole rows at a time: the service checks an upload with memory that
does not grow with the file (``profile``), the trainer builds its arrays from the same reading
(``load_csv`` keeps the parsed blocks and fills its float32 matrix from them), so that both
halves agree on every file.

Every column but the label is a feature. A column is numeric when every block pandas parses holds
numbers in it (booleans count as 0/1); any other column is text, and is one-hot encoded, one
``column=value`` feature per distinct value in sorted order, up to ``MAX_CATEGORIES`` values (a
column with more is most likely an identifier or free text, and is refused). Missing or
non-finite values are refused, naming the column and line. Labels are integers, or class names
numbered in sorted order.

Rows are cut at newlines outside double quotes; a row longer than ``MAX_CSV_ROW_BYTES`` (or a
header longer than ``MAX_CSV_HEADER_BYTES``) is refused, and so is a row with more fields than
the header.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.datafiles._arrays import LabelStats, summary_of
from hpsearch.datafiles._common import (
    CSV_BLOCK_BYTES,
    MAX_CATEGORIES,
    MAX_CSV_HEADER_BYTES,
    MAX_CSV_ROW_BYTES,
    MAX_FEATURES,
    MAX_TEXT_CHARS,
    DatasetError,
    Fields,
    RawArrays,
)

# Distinct values of one text column counted exactly (for the error); past it, refused at once.
_MAX_COUNTED = 1_000
_PARSE = {"skipinitialspace": True, "index_col": False, "low_memory": False}


@dataclass(frozen=True)
class _Block:
    """Whole rows of the file: their bytes, where they start, and the line they start on."""

    data: bytes
    offset: int
    line: int


def _row_ends(block: bytes, quoted: int) -> tuple[np.ndarray, int]:
    """Positions of the newlines that end rows (outside double quotes), given whether ``block``
    starts inside quotes (``quoted``: 0 or 1); and whether it ends inside them."""
    a = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(a == 10)
    if b'"' not in block:
        return (newlines if not quoted else newlines[:0]), quoted
    # Parity of the quotes seen so far (uint8 wraps around; its lowest bit is the parity).
    parity = np.cumsum(a == 34, dtype=np.uint8) + np.uint8(quoted)
    return newlines[(parity[newlines] & 1) == 0], int(parity[-1] & 1)


class _Reader:
    """The file's header and its rows, a block at a time."""

    def __init__(self, path: Path, name: str, fields: Fields) -> None:
        self.path, self.name, self.fields = path, name, fields
        self.header = b""
        self.header_lines = 0  # physical lines the header takes
        self._first: _Block | None = None  # the rows after the header in its block
        self._next = (0, 1)  # where the blocks after that one start: offset, line
        self._find_header()
        self.columns = self._parse_header()

    def bad(self, reason: str) -> DatasetError:
        return DatasetError(self.fields.file, f"{self.name}: {reason}")

    def _raw_blocks(self, offset: int, line: int) -> Generator[_Block, None, None]:
        """Whole rows from ``offset`` (which starts a row on physical line ``line``)."""
        pending = b""
        quoted = 0
        with self.path.open("rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(CSV_BLOCK_BYTES)
                if not chunk:
                    break
                ends, quoted = _row_ends(chunk, quoted)
                if len(ends) == 0:
                    pending += chunk
                    if len(pending) > MAX_CSV_ROW_BYTES:
                        raise self._too_long(line)
                    continue
                lengths = np.diff(ends, prepend=-1)
                lengths[0] += len(pending)
                if lengths.max() > MAX_CSV_ROW_BYTES:
                    i = int(np.argmax(lengths > MAX_CSV_ROW_BYTES))
                    start = 0 if i == 0 else int(ends[i - 1]) + 1
                    raise self._too_long(line + (pending + chunk[:start]).count(b"\n"))
                cut = int(ends[-1]) + 1
                data = pending + chunk[:cut]
                yield _Block(data, offset, line)
                offset += len(data)
                line += data.count(b"\n")
                pending = chunk[cut:]
        if pending.strip():
            yield _Block(pending, offset, line)

    def _too_long(self, line: int) -> DatasetError:
        return self.bad(
            f"the row on line {line} is longer than {MAX_CSV_ROW_BYTES >> 20} MiB "
            "(an unclosed quote?)"
        )

    def _find_header(self) -> None:
        """The header is the first row that is not blank."""
        blocks = self._raw_blocks(0, 1)
        try:
            self._header_in(blocks)
        finally:
            blocks.close()

    def _header_in(self, blocks: Iterator[_Block]) -> None:
        for block in blocks:
            ends, _ = _row_ends(block.data, 0)
            start = 0
            for end in [*ends.tolist(), len(block.data) - 1]:
                row = block.data[start : end + 1]
                if row.strip():
                    if len(row) > MAX_CSV_HEADER_BYTES:
                        raise self.bad(
                            f"its header is longer than {MAX_CSV_HEADER_BYTES >> 20} MiB"
                        )
                    self.header = row if row.endswith(b"\n") else row + b"\n"
                    self.header_lines = self.header.count(b"\n")
                    rest = block.data[end + 1 :]
                    line = block.line + block.data[: end + 1].count(b"\n")
                    if rest.strip():
                        self._first = _Block(rest, block.offset + end + 1, line)
                    self._next = (block.offset + len(block.data), line + rest.count(b"\n"))
                    return
                start = end + 1
        raise self.bad("not a readable CSV file (it is empty)")

    def _parse_header(self) -> list[str]:
        import pandas as pd

        try:
            frame = pd.read_csv(io.BytesIO(self.header), nrows=0, **_PARSE)
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise self.bad(f"not a readable CSV file ({exc})") from None
        return [str(c) for c in frame.columns]

    def blocks(self) -> Iterator[_Block]:
        """Every block of rows after the header."""
        if self._first is not None:
            yield self._first
        yield from self._raw_blocks(*self._next)

    def frame(self, block: _Block, text: set[str]) -> Any:
        """The block parsed by pandas (the columns in ``text`` as strings)."""
        import pandas as pd

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(
                    io.BytesIO(self.header + block.data),
                    dtype={c: object for c in text} or None,
                    **_PARSE,
                )
        except pd.errors.ParserWarning:
            raise self.bad(
                f"the row on line {block.line} has more fields than the header's "
                f"{len(self.columns)} columns"
            ) from None
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            message = re.sub(
                r"line (\d+)",
                lambda m: f"line {block.line + int(m.group(1)) - 1 - self.header_lines}",
                str(exc).strip(),
            )
            raise self.bad(f"not a readable CSV file ({message})") from None
        return frame

    def reread(self, span: tuple[int, int, int], column: int) -> Any:
        """One column of an earlier block (``offset, size, line``), as the file spells it."""
        import pandas as pd

        offset, size, _ = span
        with self.path.open("rb") as f:
            f.seek(offset)
            data = f.read(size)
        frame = pd.read_csv(io.BytesIO(self.header + data), dtype=object, **_PARSE)
        return frame.iloc[:, column]


@dataclass
class _Column:
    """What the pass learns of one column."""

    name: str
    text: bool = False
    missing: int = 0  # NaN or empty cells
    first_missing: int | None = None
    nonfinite: int = 0  # inf in the blocks that parse as numbers
    first_nonfinite: int | None = None
    values: dict[str, int] = field(default_factory=dict)  # text: distinct values, and counts


@dataclass
class CsvProfile:
    """What the checks found: each column's kind (and a text column's values), the labels'."""

    columns: list[_Column]
    label: _Column
    rows: int
    stats: LabelStats  # numeric labels
    features: list[str]

    @property
    def class_names(self) -> list[str] | None:
        return sorted(self.label.values) if self.label.text else None


class _Profiler:
    def __init__(
        self,
        reader: _Reader,
        label_column: str,
        max_array_bytes: int | None,
        max_classes: int | None,
        keep: bool = False,
    ) -> None:
        self.reader, self.max_array_bytes, self.max_classes = reader, max_array_bytes, max_classes
        # keep: the blocks as parsed (and the rereads of columns found to be text later), for
        # load_csv to build its arrays from without parsing the file again.
        self.keep = keep
        self.frames: list[Any] = []
        self.rereads: dict[tuple[int, int], Any] = {}
        names = reader.columns
        fields = reader.fields
        if label_column not in names:
            more = " ..." if len(names) > 20 else ""
            raise DatasetError(
                fields.label_column,
                f"{reader.name} has no column {label_column!r}; columns: "
                f"{', '.join(names[:20])}{more}",
            )
        if len(names) == 1:
            raise reader.bad("no feature columns beside the label")
        if len(names) - 1 > MAX_FEATURES:
            raise reader.bad(f"{len(names) - 1:,} feature columns; at most {MAX_FEATURES:,}")
        self.columns = [_Column(n) for n in names]
        self.label_index = names.index(label_column)
        self.label = self.columns[self.label_index]
        self.stats = LabelStats("train", max_classes)
        self.rows = 0
        self.tracked = 0  # distinct text values held, all columns together
        # The blocks read so far (offset, size, line): a column found to be text in a later
        # block is read again in these, for its values as the file spells them.
        self.spans: list[tuple[int, int, int]] = []

    def run(self) -> CsvProfile:
        for block in self.reader.blocks():
            text = {c.name for c in self.columns if c.text}
            frame = self.reader.frame(block, text)
            self._block(frame)
            if self.keep:
                self.frames.append(frame)
            self.rows += len(frame)
            self.spans.append((block.offset, len(block.data), block.line))
            self._check_size(len(self.columns) - 1)
        return self._finish()

    def _block(self, frame: Any) -> None:
        """One block's statistics: the numeric columns all at once, text ones one by one."""
        import pandas as pd

        dtypes = frame.dtypes
        numeric = [
            j
            for j, c in enumerate(self.columns)
            if not c.text and pd.api.types.is_numeric_dtype(dtypes.iloc[j])
        ]
        if numeric:
            numbers = frame.iloc[:, numeric].to_numpy(dtype=np.float64, na_value=np.nan)
            missing, infinite = np.isnan(numbers), np.isinf(numbers)
            for k in np.flatnonzero(missing.any(axis=0) | infinite.any(axis=0)).tolist():
                column = self.columns[numeric[k]]
                self._count(column, missing[:, k], "missing")
                self._count(column, infinite[:, k], "nonfinite")
            if self.label_index in numeric:
                k = numeric.index(self.label_index)
                self.stats.add(numbers[~missing[:, k], k])
        done = set(numeric)
        for j, column in enumerate(self.columns):
            if j in done:
                continue
            values = frame.iloc[:, j]
            self._count(column, values.isna().to_numpy(), "missing")
            if not column.text:  # text from now on: its earlier blocks' values, as spelled
                column.text = True
                for i, span in enumerate(self.spans):
                    earlier = self.reader.reread(span, j)
                    if self.keep:
                        self.rereads[(i, j)] = earlier
                    self._values(column, j, earlier)
            self._values(column, j, values)

    def _count(self, column: _Column, mask: np.ndarray, what: str) -> None:
        n = int(mask.sum())
        if not n:
            return
        first = self.rows + int(np.argmax(mask)) + 2  # line 1 is the header
        if what == "missing":
            column.missing += n
            column.first_missing = column.first_missing or first
        else:
            column.nonfinite += n
            column.first_nonfinite = column.first_nonfinite or first

    def _values(self, column: _Column, j: int, values: Any) -> None:
        counts = values.dropna().astype(str).value_counts(sort=False)
        before = len(column.values)
        for value, count in counts.items():
            column.values[value] = column.values.get(value, 0) + int(count)
        is_label = j == self.label_index
        longest = max((len(v) for v in counts.index), default=0)
        if longest > MAX_TEXT_CHARS:
            what = "a class name" if is_label else "a value"
            raise self._error(
                is_label,
                f"text column {column.name!r} holds {what} of {longest:,} characters; "
                f"at most {MAX_TEXT_CHARS} are taken",
            )
        if is_label:
            if self.max_classes is not None and len(column.values) > self.max_classes:
                raise self._error(
                    True,
                    f"the label column {column.name!r} holds more than {self.max_classes:,} "
                    f"class names; at most {self.max_classes:,} classes",
                )
            return
        self.tracked += len(column.values) - before
        if len(column.values) > _MAX_COUNTED:
            raise self.reader.bad(
                f"text column {column.name!r} has more than {_MAX_COUNTED:,} distinct values; "
                f"at most {MAX_CATEGORIES} are one-hot encoded (drop it, or encode it as numbers)"
            )
        if self.tracked > MAX_FEATURES:
            raise self.reader.bad(
                f"its text columns hold more than {MAX_FEATURES:,} distinct values: more "
                f"features than the {MAX_FEATURES:,} taken once one-hot encoded"
            )

    def _error(self, label: bool, reason: str) -> DatasetError:
        if label:
            return DatasetError(self.reader.fields.label_column, f"{self.reader.name}: {reason}")
        return self.reader.bad(reason)

    def _check_size(self, features: int) -> None:
        if self.max_array_bytes is None:
            return
        size = self.rows * features * 4
        if size > self.max_array_bytes:
            raise self.reader.bad(
                f"its {self.rows:,} rows of {features:,} features take {size:,} bytes as "
                f"float32; the limit is {self.max_array_bytes:,}"
            )

    def _finish(self) -> CsvProfile:
        reader, name, label = self.reader, self.reader.name, self.label
        if self.rows == 0:
            raise reader.bad("no rows beside the header")
        if label.missing:
            raise DatasetError(
                reader.fields.label_column,
                f"{name}: {label.missing} row(s) have no label in {label.name!r} "
                f"(first on line {label.first_missing})",
            )
        features = [c for c in self.columns if c is not label]
        for c in features:
            bad = c.missing if c.text else c.missing + c.nonfinite
            if bad:
                what = "missing" if c.text else "missing or non-finite (NaN, inf)"
                lines = (c.first_missing,) if c.text else (c.first_missing, c.first_nonfinite)
                first = min(x for x in lines if x is not None)
                raise reader.bad(
                    f"column {c.name!r} has {bad} {what} value(s) (first on line {first})"
                )
        for c in features:
            if c.text and len(c.values) > MAX_CATEGORIES:
                raise reader.bad(
                    f"text column {c.name!r} has {len(c.values):,} distinct values; at most "
                    f"{MAX_CATEGORIES} are one-hot encoded (drop it, or encode it as numbers)"
                )
        names = [c.name for c in features if not c.text]
        names += [f"{c.name}={v}" for c in features if c.text for v in sorted(c.values)]
        self._check_size(len(names))
        return CsvProfile(features, label, self.rows, self.stats, names)


def profile(
    path: Path,
    name: str,
    label_column: str,
    fields: Fields,
    max_array_bytes: int | None = None,
    max_classes: int | None = None,
) -> CsvProfile:
    """Read the file once, a block of rows at a time, and run every check on it."""
    if not path.is_file():
        raise DatasetError(fields.file, f"no such file: {path}")
    return _Profiler(_Reader(path, name, fields), label_column, max_array_bytes, max_classes).run()


def check_csv(
    path: Path,
    name: str,
    label_column: str,
    fields: Fields,
    max_array_bytes: int | None,
    max_classes: int | None,
) -> dict[str, object]:
    """Every check of ``read_file`` and ``check_arrays``, streamed; the dataset's summary."""
    p = profile(path, name, label_column, fields, max_array_bytes, max_classes)
    field_ = fields.file
    if p.label.text:
        names = sorted(p.label.values)
        if len(names) < 2:
            raise DatasetError(field_, "the labels must cover at least 2 classes")
        counts = [p.label.values[n] for n in names]
        n_classes = len(names)
    else:
        p.stats.finish(field_)
        n_classes = int(p.stats.high or 0) + 1
        if n_classes < 2:
            raise DatasetError(field_, "the labels must cover at least 2 classes")
        counts = p.stats.counts(n_classes).tolist()
    shapes = {"x_train": [p.rows, len(p.features)], "y_train": [p.rows]}
    return summary_of(shapes, n_classes, counts, p.class_names, p.features)


def load_csv(path: Path, name: str, label_column: str, fields: Fields) -> RawArrays:
    """The file as arrays (float32 features, one-hot encoded; labels), built from the blocks
    that ``profile``'s checks parsed (the file is read once)."""
    import pandas as pd

    reader = _Reader(path, name, fields)
    profiler = _Profiler(reader, label_column, None, None, keep=True)
    p = profiler.run()
    position = {column: i for i, column in enumerate(reader.columns)}
    numeric = [position[c.name] for c in p.columns if not c.text]
    encoded = [(position[c.name], sorted(c.values)) for c in p.columns if c.text]
    x = np.zeros((p.rows, len(p.features)), np.float32)
    labels: list[np.ndarray] = []
    row = 0
    for i, frame in enumerate(profiler.frames):
        n = len(frame)
        if numeric:
            x[row : row + n, : len(numeric)] = frame.iloc[:, numeric].to_numpy(np.float32)
        offset = len(numeric)
        for j, categories in encoded:
            values = profiler.rereads.get((i, j), frame.iloc[:, j])
            codes = pd.Categorical(values.astype(str), categories).codes
            x[np.arange(row, row + n), offset + codes] = 1.0
            offset += len(categories)
        j = profiler.label_index
        if p.label.text:
            values = profiler.rereads.get((i, j), frame.iloc[:, j]).astype(str)
            labels.append(pd.Categorical(values, sorted(p.label.values)).codes.astype(np.int64))
        else:
            labels.append(frame.iloc[:, j].to_numpy())
        profiler.frames[i] = None  # its rows are in x now
        row += n
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return RawArrays(x, y, class_names=p.class_names, features=p.features)
