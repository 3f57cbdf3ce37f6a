"""``.npz`` files: the zip directory and every array's header are read before any data, so that an
object array, a member that claims more than the limit, or a "zip bomb" is refused unread. The
service's checks then stream each member a block at a time (``check_npz``: memory stays at a few
blocks whatever the file claims, and decompression stops as soon as the count passes the limit);
the trainer loads the arrays whole (``load_npz``), after the same header checks.

Nothing is unpickled: headers with an object dtype are refused, and ``np.load`` runs with
``allow_pickle=False``.
"""

from __future__ import annotations

import lzma
import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.datafiles._arrays import (
    LabelStats,
    check_classes,
    check_layout,
    count_nonfinite,
    summary_of,
)
from hpsearch.datafiles._common import (
    MAX_COMPRESSION_RATIO,
    NPZ_BLOCK_BYTES,
    NPZ_KEYS,
    RATIO_FLOOR_BYTES,
    DatasetError,
)

# The zip directory of an .npz (at most 6 members) is a few hundred bytes.
_MAX_DIRECTORY_BYTES = 64 * 1024
_END_RECORD = struct.Struct("<4s4H2LH")  # the zip's "end of central directory" record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # just before it: where the zip64 end record is
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # entries (8th field) and directory size (9th)
_LABEL_BLOCK = 1 << 20  # labels per block: bounds their int64 temporaries to 8 MB
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,  # a compression method zipfile cannot read
    RuntimeError,  # an encrypted member
    struct.error,
    zlib.error,  # a corrupt deflate stream: zipfile does not wrap it
    lzma.LZMAError,  # likewise for an lzma member
)


def _unreadable(field: str, name: str, exc: BaseException) -> DatasetError:
    return DatasetError(field, f"{name}: not a readable .npz file (truncated or corrupt: {exc})")


@dataclass(frozen=True)
class _Member:
    """One array of the archive, as its header describes it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    header_bytes: int  # the .npy magic string and header before the data

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Inspection:
    """An open archive whose directory and headers passed their checks."""

    def __init__(self, path: Path, name: str, field: str, max_array_bytes: int | None) -> None:
        self.name, self.field = name, field
        self._check_directory(path)
        self.archive = zipfile.ZipFile(path)
        try:
            self.members = self._read_headers(max_array_bytes)
        except BaseException:
            self.archive.close()
            raise

    def close(self) -> None:
        self.archive.close()

    def bad(self, reason: str) -> DatasetError:
        return DatasetError(self.field, f"{self.name}: {reason}")

    def _check_directory(self, path: Path) -> None:
        """Refuse an archive with more members than an .npz has, or a huge directory, before
        zipfile reads that directory into memory: from the end record zipfile reads (the last
        one, or the zip64 one it points to)."""
        with path.open("rb") as f:
            size = f.seek(0, 2)
            tail_size = min(size, _END_RECORD.size + 65_535)
            f.seek(size - tail_size)
            tail = f.read(tail_size)
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < _END_RECORD.size:
                raise self.bad(
                    "not a readable .npz file (truncated or corrupt: no zip directory at its end)"
                )
            _, _, _, _, entries, directory_bytes, _, _ = _END_RECORD.unpack_from(tail, at)
            locator = tail[max(at - _ZIP64_LOCATOR.size, 0) : at]
            if len(locator) == _ZIP64_LOCATOR.size and locator.startswith(b"PK\x06\x07"):
                f.seek(_ZIP64_LOCATOR.unpack(locator)[2])
                record = f.read(_ZIP64_END.size)
                if len(record) == _ZIP64_END.size and record.startswith(b"PK\x06\x06"):
                    fields = _ZIP64_END.unpack(record)
                    entries, directory_bytes = (
                        max(entries, fields[7]),
                        max(directory_bytes, fields[8]),
                    )
        if entries > len(NPZ_KEYS):
            raise self.bad(
                f"holds {entries:,} members; an .npz holds at most {len(NPZ_KEYS)} arrays "
                f"({', '.join(NPZ_KEYS)})"
            )
        if directory_bytes > _MAX_DIRECTORY_BYTES:
            raise self.bad(
                f"its zip directory takes {directory_bytes:,} bytes; an .npz's takes at most "
                f"{_MAX_DIRECTORY_BYTES:,}"
            )

    def _read_headers(self, max_array_bytes: int | None) -> dict[str, _Member]:
        infos = self.archive.infolist()
        keys = [i.filename.removesuffix(".npy") for i in infos]
        unknown = sorted(set(keys) - set(NPZ_KEYS))
        if unknown:
            raise self.bad(f"unknown array(s) {', '.join(unknown)}; expected {', '.join(NPZ_KEYS)}")
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise self.bad(f"holds {', '.join(twice)} more than once")
        if max_array_bytes is not None:
            self._check_declared_sizes(infos, keys, max_array_bytes)
        members = {key: self._read_member(info, key) for info, key in zip(infos, keys, strict=True)}
        total = sum(m.data_bytes for m in members.values())
        if max_array_bytes is not None and total > max_array_bytes:
            raise self.bad(
                f"its arrays take {total:,} bytes once decompressed; "
                f"the limit is {max_array_bytes:,}"
            )
        for key in ("x_train", "y_train"):
            if key not in members:
                raise self.bad(f"missing the array {key!r}")
        for part in ("val", "test"):
            if (f"x_{part}" in members) != (f"y_{part}" in members):
                raise self.bad(f"x_{part} and y_{part} must be given together")
        return members

    def _read_member(self, info: zipfile.ZipInfo, key: str) -> _Member:
        """One array's header, checked against what the archive holds of it."""
        if info.flag_bits & 0x1:
            raise self.bad(f"{key} is encrypted")
        with self.archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            header_bytes = f.tell()
        if dtype.hasobject:
            raise self.bad(
                f"{key} holds Python objects (a pickled object array); "
                "only numeric arrays are accepted"
            )
        member = _Member(info, tuple(int(n) for n in shape), dtype, header_bytes)
        if header_bytes + member.data_bytes != info.file_size:
            raise self.bad(
                f"{key}'s header says {member.shape} {dtype} ({member.data_bytes:,} bytes) "
                f"but the archive holds {info.file_size - header_bytes:,} bytes of it "
                "(truncated or corrupt)"
            )
        return member

    def _check_declared_sizes(
        self, infos: list[zipfile.ZipInfo], keys: list[str], max_array_bytes: int
    ) -> None:
        """What the directory says each member decompresses to: the total within the limit (and
        room for the headers), and no member of zeros (a zip bomb)."""
        declared = sum(i.file_size for i in infos)
        if declared > max_array_bytes + len(infos) * 65_536:
            raise self.bad(
                f"its arrays take {declared:,} bytes once decompressed (as its zip directory "
                f"says); the limit is {max_array_bytes:,}"
            )
        for info, key in zip(infos, keys, strict=True):
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_FLOOR_BYTES and ratio > MAX_COMPRESSION_RATIO:
                raise self.bad(
                    f"{key} decompresses {ratio:,.0f} times ({info.compress_size:,} bytes to "
                    f"{info.file_size:,}); a member over {RATIO_FLOOR_BYTES >> 20} MiB may "
                    f"decompress at most {MAX_COMPRESSION_RATIO} times (a zip bomb?). Real "
                    "data compresses far less; save it uncompressed (numpy.savez) if it is"
                )

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        return {key: (m.shape, m.dtype) for key, m in self.members.items()}


def _blocks(
    inspection: _Inspection, key: str, read: list[int], max_bytes: int | None
) -> Iterator[np.ndarray]:
    """The member's values, a block at a time; ``read[0]`` counts the decompressed bytes of the
    whole archive, refused as soon as it passes ``max_bytes``."""
    m = inspection.members[key]
    itemsize = max(m.dtype.itemsize, 1)
    per_block = NPZ_BLOCK_BYTES // itemsize
    if key.startswith("y_"):
        per_block = min(per_block, _LABEL_BLOCK)
    step = max(per_block, 1) * itemsize
    with inspection.archive.open(m.info) as f:
        f.read(m.header_bytes)
        left = m.data_bytes
        while left:
            block = f.read(min(step, left))
            if not block or len(block) % itemsize:
                raise inspection.bad(f"not a readable .npz file (truncated or corrupt: {key})")
            read[0] += len(block)
            if max_bytes is not None and read[0] > max_bytes:
                raise inspection.bad(
                    f"decompressed past the limit of {max_bytes:,} bytes; refused there"
                )
            left -= len(block)
            yield np.frombuffer(block, m.dtype)
        f.read(1)  # at the member's end: zipfile checks its CRC


def check_npz(
    path: Path, name: str, field: str, max_array_bytes: int | None, max_classes: int | None
) -> dict[str, object]:
    """Every check of ``read_file`` and ``check_arrays``, streamed; the dataset's summary."""
    try:
        inspection = _Inspection(path, name, field, max_array_bytes)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(field, f"no such file: {path}") from None
    except _READ_ERRORS as exc:
        raise _unreadable(field, name, exc) from None
    try:
        parts = check_layout(inspection.layout(), field)
        read = [0]
        stats: dict[str, LabelStats] = {}
        for part in parts:
            nonfinite = sum(
                count_nonfinite(x) for x in _blocks(inspection, f"x_{part}", read, max_array_bytes)
            )
            if nonfinite:
                raise DatasetError(field, f"x_{part} holds {nonfinite} NaN or infinite value(s)")
            stats[part] = LabelStats(part, max_classes)
            for y in _blocks(inspection, f"y_{part}", read, max_array_bytes):
                stats[part].add(y)
            stats[part].finish(field)
        n_classes = check_classes(stats, field)
    except DatasetError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(field, name, exc) from None
    finally:
        inspection.close()
    shapes: dict[str, list[int]] = {}
    for part in parts:
        shapes[f"x_{part}"] = list(inspection.members[f"x_{part}"].shape)
        shapes[f"y_{part}"] = [inspection.members[f"y_{part}"].shape[0]]
    return summary_of(shapes, n_classes, stats["train"].counts(n_classes).tolist())


def load_npz(
    path: Path, name: str, field: str, max_array_bytes: int | None
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, loaded whole once its directory and headers passed."""
    try:
        _Inspection(path, name, field, max_array_bytes).close()
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(field, f"no such file: {path}") from None
    except _READ_ERRORS as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(
                field,
                f"{name}: holds Python objects (a pickled object array); "
                "only numeric arrays are accepted",
            ) from None
        raise _unreadable(field, name, exc) from None
