"""``hpsearch dataset``: upload, list, show and delete against a real API, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.service.test_datasets import good_npz, npz_bytes
from tests.support import Api


def hpsearch(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", "dataset", "--api", api.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # rich wraps tables to the terminal's width
    )


def test_upload_list_show_and_delete_from_the_command_line(make_api, tmp_path) -> None:
    api = make_api("sqlite", HPSEARCH_MAX_UPLOAD_BYTES="200000")
    path = tmp_path / "points.npz"
    path.write_bytes(good_npz(seed=3))

    out = hpsearch(api, "upload", str(path), "--name", "my points")
    assert out.returncode == 0, out.stderr
    assert "(my points): x_train (240, 6), y_train (240,), x_val (60, 6), y_val (60,)" in out.stdout
    assert "3 classes" in out.stdout
    ident = out.stdout.split()[1]
    assert api.http.get(f"/api/v1/datasets/{ident}").json()["name"] == "my points"
    assert "(already uploaded)" in hpsearch(api, "upload", str(path)).stdout

    listed = hpsearch(api, "list")
    assert listed.returncode == 0 and ident in listed.stdout and "240x6" in listed.stdout
    shown = hpsearch(api, "show", ident)
    assert json.loads(shown.stdout)["id"] == ident

    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz_bytes(x_train=np.ones((9, 2)), y_train=np.arange(8) % 2))
    refused = hpsearch(api, "upload", str(bad))
    assert refused.returncode == 2
    assert "file: x_train has 9 examples but y_train has 8 labels" in refused.stderr

    big = tmp_path / "big.npz"
    big.write_bytes(npz_bytes(x_train=np.ones((5_000, 20)), y_train=np.arange(5_000) % 2))
    too_big = hpsearch(api, "upload", str(big))
    assert too_big.returncode == 2
    assert "the service accepts at most 200,000" in too_big.stderr

    assert hpsearch(api, "delete", ident).stdout.strip() == f"dataset {ident} deleted"
    gone = hpsearch(api, "show", ident)
    assert gone.returncode == 5  # not found
    assert gone.stderr == f"error: dataset {ident} not found at {api.url}\n"
