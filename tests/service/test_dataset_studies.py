"""Studies on uploaded datasets, trained by real workers that cannot see the service's data
directory (an empty file system is mounted over it in their mount namespace): they fetch each
dataset once, keep it by hash, reuse it, and fetch it again when their copy is corrupt."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from tests.service.test_datasets import good_csv, good_npz, upload
from tests.support import Api, hidden_from, spec, wait_until_done


def launch(api: Api, name: str, dataset_id: str, n_trials: int) -> int:
    body = spec(
        name,
        dataset={"id": dataset_id},
        n_trials=n_trials,
        training={"epochs": 2, "batch_size": 32, "optimizer": "sgd"},
    )
    response = api.http.post("/api/v1/studies", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def run(api: Api, name: str, dataset_id: str, n_trials: int) -> list[dict[str, Any]]:
    """Run a study to its end; its trials."""
    study_id = launch(api, name, dataset_id, n_trials)
    study = wait_until_done(api, study_id, 300)
    assert study["status"] == "completed", study
    trials: list[dict[str, Any]] = api.http.get(
        f"/api/v1/studies/{study_id}/trials", params={"limit": 100}
    ).json()["data"]
    return trials


def downloads(api: Api, dataset_id: str) -> int:
    return int(api.http.get(f"/api/v1/datasets/{dataset_id}").json()["downloads"])


def fetched(log: Path, dataset_id: str) -> int:
    """How many times a worker's log says it downloaded ``dataset_id``."""
    return sum(
        "dataset downloaded" in line and f"dataset={dataset_id}" in line
        for line in log.read_text().splitlines()
    )


def test_two_workers_without_the_data_dir_train_on_uploads_and_fetch_each_once(
    make_api, workers, tmp_path
) -> None:
    api = make_api("postgresql")
    npz_content, csv_content = good_npz(seed=2, n=400), good_csv(n=300)
    npz = upload(api, "points.npz", npz_content).json()
    csv = upload(api, "pets.csv", csv_content, label_column="kind").json()
    store = api.data_dir / "artifacts"
    assert any(store.rglob("*.npz")) and any(store.rglob("*.csv"))
    # What the workers see of the service's data directory: nothing.
    seen = subprocess.run(
        hidden_from(api.data_dir, ["ls", "-A", str(api.data_dir)]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen.stdout == ""

    w1, w2 = workers(api.url, 2, hide=api.data_dir)
    caches = {"w1": tmp_path / "w1-cache", "w2": tmp_path / "w2-cache"}

    # A study on each upload; every trial completes, on both workers.
    on_npz = run(api, "on-npz", npz["id"], 8)
    on_csv = run(api, "on-csv", csv["id"], 8)
    for trials in (on_npz, on_csv):
        assert {t["state"] for t in trials} == {"complete"}
        assert {t["worker_id"] for t in trials} == {"w1", "w2"}, "both workers should train"
    assert all(0.0 < t["value"] <= 1.0 for t in on_npz + on_csv)
    # Each worker fetched each dataset once, and keeps it under its hash.
    assert downloads(api, npz["id"]) == 2 and downloads(api, csv["id"]) == 2
    for worker in (w1, w2):
        assert fetched(worker.log, npz["id"]) == 1 and fetched(worker.log, csv["id"]) == 1
    for cache in caches.values():
        kept = sorted(p.name for p in cache.iterdir() if p.suffix in (".npz", ".csv"))
        assert kept == sorted([f"{npz['sha256']}.npz", f"{csv['sha256']}.csv"])
        assert not list(cache.glob("*.part"))

    # A second study on the same data downloads nothing.
    again = run(api, "on-npz-again", npz["id"], 6)
    assert {t["state"] for t in again} == {"complete"}
    assert downloads(api, npz["id"]) == 2
    assert fetched(w1.log, npz["id"]) == 1 and fetched(w2.log, npz["id"]) == 1

    # A corrupt copy (same size, other bytes) is found and fetched again.
    assert w2.terminate() == 0
    copy = caches["w1"] / f"{npz['sha256']}.npz"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    copy.write_bytes(bytes(data))
    healed = run(api, "after-corruption", npz["id"], 2)
    assert {t["state"] for t in healed} == {"complete"}
    assert "cached dataset is corrupt: fetching it again" in w1.log.read_text()
    assert fetched(w1.log, npz["id"]) == 2 and downloads(api, npz["id"]) == 3
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == npz["sha256"]

    # The service's own copy damaged: the worker refuses what it sends, and says why.
    blob = store / "datasets" / npz["sha256"][:2] / f"{npz['sha256']}.npz"
    blob.write_bytes(blob.read_bytes()[:-10] + bytes(10))
    copy.unlink()
    study_id = launch(api, "on-damaged", npz["id"], 1)
    wait_until_done(api, study_id, 120)
    trial = api.http.get(f"/api/v1/studies/{study_id}/trials").json()["data"][0]
    assert trial["state"] == "failed"
    assert f"dataset {npz['id']} could not be fetched intact after 3 attempts" in trial["reason"]
    assert not copy.exists() and not list(caches["w1"].glob("*.part"))
