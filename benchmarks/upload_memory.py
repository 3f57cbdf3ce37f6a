"""Upload checks: the API's peak memory and time while it checks an upload, for a zip bomb and
for legitimate large files (issue 16, finding 6).

Each case gets a fresh API process (SQLite, auth off), so that its peak RSS (``VmHWM`` in
``/proc/<pid>/status``) is that of one upload's checks; the file is streamed from disk, never
held by the client. The target: the API stays under 256 MB whatever the file claims.

    python -m benchmarks.upload_memory [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import Row, Service, database, log, print_table

TARGET_MB = 256
_BLOCK = 16 << 20


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()  # the magic string and the header


def _write_member(
    archive: zipfile.ZipFile,
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    block: Callable[[int], bytes],
) -> None:
    """One ``.npy`` member written a block at a time: ``block(n)`` gives its next ``n`` bytes."""
    left = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with archive.open(name, "w", force_zip64=True) as f:
        f.write(_npy_header(shape, dtype))
        while left:
            n = min(_BLOCK, left)
            f.write(block(n))
            left -= n


def zip_bomb(path: Path, gib: float) -> Path:
    """An ``.npz`` of a few MB whose zeros decompress to ``gib`` GiB (all under 4 GiB)."""
    rows = int(gib * 2**30) // (256 * 4)
    zeros = bytes(_BLOCK)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        _write_member(archive, "x_train.npy", (rows, 256), "<f4", lambda n: zeros[:n])
        _write_member(archive, "y_train.npy", (rows,), "<i8", lambda n: zeros[:n])
    return path


def sparse_npz(path: Path, gib: float) -> Path:
    """An ``.npz`` whose float32 inputs (one value in 256 not zero) decompress to ``gib`` GiB at
    about 140 times their size: under the ratio bound, so its checks stream all of it."""
    rows = int(gib * 2**30) // (256 * 4)
    rng = np.random.default_rng(0)
    sparse = np.zeros(_BLOCK // 4, np.float32)
    sparse[::256] = rng.standard_normal(sparse[::256].size)
    block = sparse.tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        _write_member(archive, "x_train.npy", (rows, 256), "<f4", lambda n: block[:n])
        labels = (np.arange(rows) % 10).astype(np.uint8).tobytes()
        _write_member(archive, "y_train.npy", (rows,), "|u1", lambda n: labels[:n])
    return path


def float32_npz(path: Path, megabytes: int) -> Path:
    """An uncompressed ``.npz`` of ``megabytes`` MB of random float32 inputs and 10 classes."""
    rows = megabytes * 10**6 // (256 * 4)
    rng = np.random.default_rng(0)

    def noise(n: int) -> bytes:
        return rng.standard_normal(n // 4, dtype=np.float32).tobytes()

    def labels(n: int) -> bytes:
        return rng.integers(0, 10, n // 8, dtype=np.int64).tobytes()

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        _write_member(archive, "x_train.npy", (rows, 256), "<f4", noise)
        _write_member(archive, "y_train.npy", (rows,), "<i8", labels)
    return path


def numeric_csv(path: Path, megabytes: int) -> Path:
    """A CSV of about ``megabytes`` MB: 50 numeric features and an integer label."""
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        f.write(",".join(f"f{i}" for i in range(50)) + ",label\n")
        while f.tell() < megabytes * 10**6:
            x = rng.normal(size=(2_000, 50))
            y = rng.integers(0, 10, 2_000)
            np.savetxt(f, np.column_stack([x, y]), fmt=["%.6g"] * 50 + ["%d"], delimiter=",")
    return path


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def _multipart(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            yield block
    yield f"\r\n--{boundary}--\r\n".encode()


def measure(path: Path) -> dict[str, float | str]:
    """Upload ``path`` to a fresh API; its answer, the time it took and the API's peak RSS."""
    with database("sqlite") as url, tempfile.TemporaryDirectory() as data:
        env = {"HPSEARCH_DATA_DIR": data, "HPSEARCH_MAX_UPLOAD_BYTES": str(2**30)}
        with Service(url, env=env) as api:
            assert api.process is not None
            httpx.get(f"{api.url}/api/v1/datasets", timeout=30)
            idle = peak_rss_mb(api.process.pid)
            boundary = "hpsbenchb0undary"
            started = time.perf_counter()
            answer = httpx.post(
                f"{api.url}/api/v1/datasets",
                content=_multipart(path, boundary),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                timeout=600,
            )
            seconds = time.perf_counter() - started
            peak = peak_rss_mb(api.process.pid)
    reason = ""
    if answer.status_code >= 400:
        errors = answer.json().get("errors") or [{"reason": answer.json().get("detail", "")}]
        reason = str(errors[0]["reason"])[:70]
    return {
        "status": answer.status_code,
        "seconds": seconds,
        "idle": idle,
        "peak": peak,
        "reason": reason,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny files: does it still run?")
    parser.add_argument("--keep", type=Path, help="write the files here (and reuse them)")
    args = parser.parse_args(argv)
    bomb_gib, npz_mb, csv_mb = (0.05, 5, 5) if args.quick else (3.5, 200, 200)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cases: dict[str, tuple[Path, Callable[[Path], Path]]] = {
            f"zip bomb: .npz decompressing to {bomb_gib:g} GiB": (
                folder / f"bomb-{bomb_gib:g}.npz",
                lambda p: zip_bomb(p, bomb_gib),
            ),
            f"{bomb_gib:g} GiB of float32 at 140x, .npz (streamed)": (
                folder / f"sparse-{bomb_gib:g}.npz",
                lambda p: sparse_npz(p, bomb_gib),
            ),
            f"{npz_mb} MB of float32, .npz": (
                folder / f"float32-{npz_mb}.npz",
                lambda p: float32_npz(p, npz_mb),
            ),
            f"{csv_mb} MB numeric .csv": (
                folder / f"numeric-{csv_mb}.csv",
                lambda p: numeric_csv(p, csv_mb),
            ),
        }
        rows: list[Row] = []
        notes = []
        for label, (path, make) in cases.items():
            if not path.exists():
                log(f"writing {path}")
                make(path)
            log(f"uploading {label} ({path.stat().st_size / 1e6:,.2f} MB)")
            m = measure(path)
            log(f"{label}: {m}")
            size = path.stat().st_size / 1e6
            rows += [
                Row(f"{label} ({size:,.2f} MB file): answer", str(m["status"])),
                Row("  seconds to answer", float(m["seconds"]), digits=1),
                Row(
                    f"  API peak RSS, MB (idle: {float(m['idle']):.0f})",
                    float(m["peak"]),
                    target=f"< {TARGET_MB}",
                    met=float(m["peak"]) < TARGET_MB,
                    digits=0,
                ),
            ]
            if m["reason"]:
                notes.append(f"{label}: {m['reason']}")
        print_table("Upload checks: API memory and time", "", rows, notes)


if __name__ == "__main__":
    main()
