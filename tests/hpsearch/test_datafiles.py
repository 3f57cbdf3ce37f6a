"""The service's streamed checks (``check_file``) and the trainer's loading (``read_file`` and
``check_arrays``) agree on every file, and the streamed checks refuse what a file claims before
they read it."""

from __future__ import annotations

import io
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpsearch.datafiles import (
    CLASS_CEILING,
    CSV_BLOCK_BYTES,
    DatasetError,
    Fields,
    RawArrays,
    check_arrays,
    check_file,
    file_format,
    read_file,
)
from tests.hpsearch.zipfiles import bomb, npy_header, zip_of

FIELDS = Fields(file="file", label_column="label_column")
LIMIT = 4 * 2**30
CLASSES = 1_000


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def rows(n: int, line: str = "{i},{c},{l}") -> str:
    colors = ["red", "green", "blue"]
    return "".join(
        line.format(i=i * 0.5, c=colors[i % 3], l=i % 4, k=["cat", "dog"][i % 2]) + "\n"
        for i in range(n)
    )


def past_one_block(line: str) -> str:
    """Enough rows of ``line`` to fill the first block the CSV reader takes, and then some."""
    return line * (CSV_BLOCK_BYTES // len(line) + 10)


rng = np.random.default_rng(0)
FILES: dict[str, tuple[str, bytes, str]] = {
    "npz with validation and test sets": (
        "a.npz",
        npz(
            x_train=rng.normal(size=(200, 3, 4)).astype(np.float32),
            y_train=np.arange(200) % 5,
            x_val=np.ones((20, 3, 4), np.float16),
            y_val=(np.arange(20) % 5).astype(np.float64).reshape(20, 1),
            x_test=np.ones((10, 3, 4), np.uint8),
            y_test=np.arange(10, dtype=np.uint8) % 5,
        ),
        "label",
    ),
    "npz with boolean labels": (
        "b.npz",
        npz(x_train=np.ones((30, 2)), y_train=np.arange(30) % 2 == 0),
        "label",
    ),
    "npz, fractional label": (
        "f.npz",
        npz(x_train=np.ones((30, 2)), y_train=np.arange(30) / 7),
        "label",
    ),
    "npz, inf in x_val": (
        "i.npz",
        npz(
            x_train=np.ones((30, 2)),
            y_train=np.arange(30) % 2,
            x_val=np.array([[1.0, np.inf]] * 4),
            y_val=np.arange(4) % 2,
        ),
        "label",
    ),
    "npz, a test label never seen in training": (
        "t.npz",
        npz(
            x_train=np.ones((30, 2)),
            y_train=np.arange(30) % 2,
            x_test=np.ones((3, 2)),
            y_test=np.array([0, 1, 7]),
        ),
        "label",
    ),
    "npz, one class": ("o.npz", npz(x_train=np.ones((9, 2)), y_train=np.zeros(9)), "label"),
    "npz, a stray array": (
        "s.npz",
        npz(x_train=np.ones((9, 2)), y_train=np.arange(9) % 2, labels=np.ones(3)),
        "label",
    ),
    "npz, x_val without y_val": (
        "v.npz",
        npz(x_train=np.ones((9, 2)), y_train=np.arange(9) % 2, x_val=np.ones((3, 2))),
        "label",
    ),
    "csv with text features and class names": (
        "p.csv",
        ("size,color,kind\n" + rows(90, "{i},{c},{k}")).encode(),
        "kind",
    ),
    "csv with a column that turns text after the first block": (
        "late.csv",
        ("a,b,label\n" + past_one_block("1.5,3,0\n1,2,1\n") + "2,x,1\n").encode(),
        "label",
    ),
    "csv with a label column that turns text after the first block": (
        "late-label.csv",
        ("a,label\n" + past_one_block("1.5,0\n2,1\n") + "2,other\n").encode(),
        "label",
    ),
    "csv with booleans": (
        "bool.csv",
        ("a,flag,label\n" + rows(40, "{i},True,{l}") + rows(40, "{i},false,{l}")).encode(),
        "label",
    ),
    "csv, a missing value in a later block": (
        "missing.csv",
        ("a,b,label\n" + past_one_block("1.5,3,0\n1,2,1\n") + "2,,1\n").encode(),
        "label",
    ),
    "csv, inf": ("inf.csv", b"a,b,label\n1,2,0\ninf,3,1\n", "label"),
    "csv, a missing label": ("nolabel.csv", b"a,b,label\n1,2,0\n3,4,\n", "label"),
    "csv, a text column with too many values": (
        "ids.csv",
        ("a,user,label\n" + "".join(f"{i},u{i},{i % 2}\n" for i in range(150))).encode(),
        "label",
    ),
    "csv, no such label column": ("x.csv", b"a,b\n1,2\n", "kind"),
    "csv, header only": ("h.csv", b"a,label\n", "label"),
    "csv, a fractional label": ("fl.csv", b"a,label\n1,0.5\n2,1\n", "label"),
}


def outcome(check: Any) -> Any:
    try:
        return check()
    except DatasetError as exc:
        return exc.to_json()


@pytest.mark.parametrize("case", list(FILES))
def test_the_streamed_checks_and_the_trainers_loading_agree(tmp_path: Path, case: str) -> None:
    """What the service accepts the trainer loads, with the same shapes, classes and features;
    what it refuses, the trainer refuses with the same field and reason."""
    name, content, label = FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    fmt = file_format(name)
    assert fmt is not None

    def streamed() -> Any:
        return check_file(path, fmt, label, FIELDS, LIMIT, CLASSES)

    def loaded() -> Any:
        raw = read_file(path, fmt, label, FIELDS, LIMIT)
        return check_arrays(raw, "file", CLASSES).summary()

    assert outcome(streamed) == outcome(loaded)


def test_a_column_that_turns_text_keeps_every_value_as_the_file_spells_it(tmp_path) -> None:
    path = tmp_path / "late.csv"
    path.write_bytes(("a,b,label\n" + past_one_block("1.5,3,0\n1,2.0,1\n") + "2,x,1\n").encode())
    summary = check_file(path, "csv", "label", FIELDS, LIMIT, CLASSES)
    assert summary["features"] == ["a", "b=2.0", "b=3", "b=x"]
    raw = read_file(path, "csv", "label", FIELDS)
    assert raw.x_train[-1].tolist() == [2.0, 0.0, 0.0, 1.0]


def refusal(path: Path, fmt: str = "npz", limit: int = LIMIT) -> str:
    with pytest.raises(DatasetError) as info:
        check_file(path, fmt, "label", FIELDS, limit, CLASSES)  # type: ignore[arg-type]
    (error,) = info.value.errors
    assert error.field == "file"
    return error.reason


def test_a_zip_bomb_is_refused_from_its_directory_before_any_decompression(tmp_path) -> None:
    path = bomb(tmp_path / "bomb.npz", 1.0)
    started = time.monotonic()
    reason = refusal(path)
    assert time.monotonic() - started < 1
    assert "x_train decompresses 1,0" in reason and "times" in reason
    assert "at most 200 times" in reason and "numpy.savez" in reason


def test_a_member_past_the_limit_is_refused_from_its_directory(tmp_path) -> None:
    path = tmp_path / "big.npz"
    path.write_bytes(npz(x_train=np.zeros((1000, 100)), y_train=np.arange(1000) % 2))
    reason = refusal(path, limit=100_000)
    assert "its arrays take 80" in reason and "as its zip directory says" in reason
    assert "the limit is 100,000" in reason


def test_a_directory_that_lies_about_a_members_size_is_caught_unread(tmp_path) -> None:
    """The directory says x_train decompresses to a few bytes: zipfile stops there, and the
    header's shape does not fit them."""
    path = bomb(tmp_path / "liar.npz", 0.25, declared=200)
    started = time.monotonic()
    reason = refusal(path)
    assert time.monotonic() - started < 1
    assert "x_train's header says (262144, 256) float32" in reason
    assert "truncated or corrupt" in reason


def test_an_archive_with_thousands_of_members_is_refused_before_its_directory_is_read(
    tmp_path,
) -> None:
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(5_000):
            archive.writestr(f"m{i}.npy", b"")
    assert "holds 5,000 members; an .npz holds at most 6 arrays" in refusal(path)


def test_a_header_that_claims_more_than_its_member_holds_is_refused(tmp_path) -> None:
    header = npy_header((10**9, 1000), "<f8")
    path = zip_of(
        tmp_path / "claims.npz",
        [
            ("x_train.npy", header, 0, len(header), zlib.crc32(header)),
            ("y_train.npy", header, 0, len(header), zlib.crc32(header)),
        ],
    )
    reason = refusal(path)
    assert "x_train's header says (1000000000, 1000) float64" in reason
    assert "the archive holds 0 bytes of it" in reason


def test_a_csv_row_longer_than_the_row_limit_is_refused_naming_its_line(tmp_path) -> None:
    path = tmp_path / "long.csv"
    path.write_bytes(b"a,label\n1,0\n2,1\n" + b'"' + b"x" * (9 << 20) + b'",1\n3,0\n')
    assert (
        refusal(path, "csv")
        == "long.csv: the row on line 4 is longer than 8 MiB (an unclosed quote?)"
    )


def test_csv_lines_are_counted_across_blocks_in_every_error(tmp_path) -> None:
    body = past_one_block("1.5,3,0\n1,2,1\n")
    lines = body.count("\n") + 1
    path = tmp_path / "more.csv"
    path.write_bytes(("a,b,label\n" + body + "1,2,3,4\n").encode())
    assert f"line {lines + 1}" in refusal(path, "csv")
    path.write_bytes(("a,b,label\n" + body + '1,"two\nlines",1\n3,,1\n').encode())
    assert refusal(path, "csv").endswith(f"(first on line {lines + 2})")


def test_csv_decoded_past_the_limit_is_refused(tmp_path) -> None:
    path = tmp_path / "wide.csv"
    path.write_bytes(("a,b,label\n" + rows(2000, "{i},{i},{l}")).encode())
    reason = refusal(path, "csv", limit=10_000)
    assert "features take" in reason and "as float32; the limit is 10,000" in reason


def corrupt_compressed_npz(path: Path) -> Path:
    """A ``numpy.savez_compressed`` file whose x_train deflate stream has bytes flipped 40 bytes
    in: its directory and header read fine, its data does not inflate."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, x_train=rng.normal(size=(500, 8)).astype(np.float32), y_train=np.arange(500) % 2
    )
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("x_train.npy")
    at = info.header_offset
    name_len, extra_len = (int.from_bytes(data[at + o : at + o + 2], "little") for o in (26, 28))
    start = at + 30 + name_len + extra_len + 40
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_compressed_npz_is_refused_naming_the_file_by_every_check(tmp_path: Path) -> None:
    path = corrupt_compressed_npz(tmp_path / "corrupt.npz")
    assert "corrupt.npz: not a readable .npz file (truncated or corrupt" in refusal(path)
    with pytest.raises(DatasetError) as info:
        read_file(path, "npz", "label", FIELDS, LIMIT)
    assert "truncated or corrupt" in info.value.errors[0].reason


def test_a_huge_label_in_a_path_dataset_is_refused_without_an_array_that_long() -> None:
    """The trainer checks with no max_classes: a label of 10**10 would need 74.5 GiB of counts
    (and as many softmax units); it is refused naming the ceiling, at once."""
    y = np.array([0, 1, 10**10, 1])
    raw = RawArrays(x_train=np.ones((4, 2), np.float32), y_train=y)
    started = time.monotonic()
    with pytest.raises(DatasetError) as info:
        check_arrays(raw)
    assert time.monotonic() - started < 1
    assert info.value.errors[0].reason == (
        "y_train holds the label 10000000000; labels must be integers in "
        f"[0, {CLASS_CEILING - 1}] (at most {CLASS_CEILING} classes)"
    )


def test_labels_under_the_ceiling_are_checked_from_the_labels_seen() -> None:
    y_val = np.array([5, 700_000])
    raw = RawArrays(
        x_train=np.ones((4, 2), np.float32),
        y_train=np.array([0, 1, 5, 1]),
        x_val=np.ones((2, 2), np.float32),
        y_val=y_val,
    )
    with pytest.raises(DatasetError) as info:
        check_arrays(raw)
    assert info.value.errors[0].reason == "y_val holds label(s) [700000] never seen in y_train"
