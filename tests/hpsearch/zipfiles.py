"""Zip archives made by hand, so that a member may say anything about itself: zip bombs, and
directories or headers that lie. Plain factories for the tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The .npy magic string and header of an array of ``shape`` and ``dtype``."""
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def deflated_zeros(total: int, block: int = 1 << 24) -> bytes:
    """A raw deflate stream of ``total`` zero bytes, made from one compressed block repeated (a
    full flush makes each copy stand alone), then a final empty block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return one * (total // block) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def zip_of(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of ``(name, stored bytes, method, decompressed size, CRC)`` members, written by
    hand so that a member may say anything about itself."""
    local, directory = b"", b""
    for name, data, method, size, crc in members:
        head = struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            0,
            method,
            0,
            0,
            crc,
            len(data),
            size,
            len(name),
            0,
        )
        entry = struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            method,
            0,
            0,
            crc,
            len(data),
            size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            len(local),
        )
        directory += entry + name.encode()
        local += head + name.encode() + data
    end = struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        0,
        0,
        len(members),
        len(members),
        len(directory),
        len(local),
        0,
    )
    path.write_bytes(local + directory + end)
    return path


def bomb(path: Path, gib: float, declared: int | None = None) -> Path:
    """x_train of zeros decompressing to ``gib`` GiB (its directory may say ``declared`` bytes
    instead, with the CRC of those bytes), and a small y_train."""
    rows = int(gib * 2**30) // 1024
    header = npy_header((rows, 256), "<f4")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    data += deflated_zeros(rows * 1024)
    labels = npy_header((rows,), "|u1")
    size = declared or len(header) + rows * 1024
    crc = zlib.crc32(bytes(size - len(header)), zlib.crc32(header)) if declared else 0
    return zip_of(
        path,
        [
            ("x_train.npy", data, 8, size, crc),
            ("y_train.npy", labels, 0, len(labels), zlib.crc32(labels)),
        ],
    )
