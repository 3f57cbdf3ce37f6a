"""Checking an upload holds the API's memory under 256 MB whatever the file claims: a zip bomb
is refused from its directory at once, and large legitimate files are checked a block at a
time. Read from the real uvicorn process's peak RSS (``VmHWM``), which only ever grows: every
test here asserts it, so the module's uploads together stay under the bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.hpsearch.zipfiles import bomb
from tests.support import Api, start_api

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial

BOUND_MB = 256


@pytest.fixture(scope="module")
def lone_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API process of its own (SQLite): its peak RSS is that of these uploads only."""
    server, drop = start_api("sqlite", tmp_path_factory.mktemp("bombs"))
    yield server
    server.stop()
    drop()


def peak_rss_mb(api: Api) -> float:
    assert api.process is not None
    status = Path(f"/proc/{api.process.pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def upload_file(api: Api, path: Path) -> tuple[int, dict[str, object], float]:
    """Stream ``path`` to the API (never read whole here): status, body, seconds."""
    started = time.monotonic()
    with path.open("rb") as f:
        response = api.http.post("/api/v1/datasets", files={"file": (path.name, f)}, timeout=300)
    return response.status_code, response.json(), time.monotonic() - started


def test_a_zip_bomb_under_the_size_limit_is_refused_at_once(lone_api: Api, tmp_path) -> None:
    """Issue 16, finding 6: 3.65 MB that decompress to 3.5 GiB (under the 4 GiB limit) took 19 s
    and 3.8 GB of the API's memory before their refusal."""
    path = bomb(tmp_path / "bomb.npz", 3.5)
    assert path.stat().st_size < 4_000_000
    status, body, seconds = upload_file(lone_api, path)
    assert status == 422, body
    (error,) = body["errors"]  # type: ignore[misc]
    assert error["field"] == "file"
    assert "x_train decompresses 1,0" in error["reason"] and "a zip bomb?" in error["reason"]
    assert seconds < 3
    assert peak_rss_mb(lone_api) < BOUND_MB
    assert lone_api.http.get("/api/v1/datasets").json()["count"] == 0


def test_a_200_mb_npz_is_checked_without_loading_it(lone_api: Api, tmp_path) -> None:
    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    n = 200_000
    np.savez(
        path,
        x_train=rng.standard_normal((n, 256), dtype=np.float32),
        y_train=rng.integers(0, 10, n),
    )
    status, body, _ = upload_file(lone_api, path)
    assert status == 201, body
    assert body["shapes"] == {"x_train": [n, 256], "y_train": [n]}
    assert sum(body["class_counts"]) == n  # type: ignore[arg-type]
    assert peak_rss_mb(lone_api) < BOUND_MB


def test_a_60_mb_csv_is_checked_a_block_at_a_time(lone_api: Api, tmp_path) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2_000, 50)).round(6)
    rows = "".join(
        ",".join(map(str, row)) + f",{i % 7},{['red', 'blue'][i % 2]}\n"
        for i, row in enumerate(values.tolist())
    ).encode()
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write((",".join(f"f{i}" for i in range(50)) + ",label,color\n").encode())
        while f.tell() < 60_000_000:
            f.write(rows)
    status, body, _ = upload_file(lone_api, path)
    assert status == 201, body
    assert body["classes"] == 7 and body["features"][-2:] == ["color=blue", "color=red"]  # type: ignore[index]
    assert peak_rss_mb(lone_api) < BOUND_MB
