"""Uploaded datasets through a real API: checks at upload, the content-addressed store, the
endpoints, deletion rules, and a crash mid-upload."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import Api, execute, spec, wait_for


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def good_npz(seed: int = 0, n: int = 240) -> bytes:
    rng = np.random.default_rng(seed)
    return npz_bytes(
        x_train=rng.normal(size=(n, 6)).astype(np.float32),
        y_train=rng.integers(0, 3, n),
        x_val=rng.normal(size=(60, 6)).astype(np.float32),
        y_val=rng.integers(0, 3, 60),
    )


def good_csv(n: int = 120) -> bytes:
    colors, kinds = ["red", "green", "blue"], ["cat", "dog"]
    rows = [f"{i * 0.5},{colors[i % 3]},{i % 7},{kinds[(i // 3) % 2]}" for i in range(n)]
    return ("size,color,age,kind\n" + "\n".join(rows) + "\n").encode()


def upload(api: Api, filename: str, content: bytes, **fields: str) -> Any:
    return api.http.post("/api/v1/datasets", files={"file": (filename, content)}, data=fields)


def multipart_body(filename: str, content: bytes) -> tuple[bytes, str]:
    """A hand-made multipart body with one file part, and its Content-Type."""
    boundary = "hpsb0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


@contextlib.contextmanager
def half_sent_upload(api: Api, content: bytes) -> Iterator[None]:
    """An upload whose first half has reached the API's disk, on a raw connection that stays
    open inside the block and closes after it (the rest is never sent)."""
    body, content_type = multipart_body("half.npz", content)
    incoming = api.data_dir / "artifacts" / "incoming"
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(
            (
                "POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body[: len(body) // 2]
        )
        wait_for(lambda: any(incoming.glob("*.part")), 10, "the upload to reach the disk")
        yield


def stored_files(api: Api) -> list[Path]:
    """Every file under the artifact directory but the store's lock file."""
    root = api.data_dir / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def test_an_npz_upload_answers_id_hash_shapes_classes_and_size(api: Api) -> None:
    content = good_npz(seed=1)
    response = upload(api, "points.npz", content)
    assert response.status_code == 201, response.text
    d = response.json()
    assert d["id"].startswith("ds_") and len(d["id"]) == 19
    assert d["name"] == "points" and d["format"] == "npz"
    assert d["sha256"] == hashlib.sha256(content).hexdigest()
    assert d["size_bytes"] == len(content)
    assert d["shapes"] == {
        "x_train": [240, 6],
        "y_train": [240],
        "x_val": [60, 6],
        "y_val": [60],
    }
    assert d["classes"] == 3 and sum(d["class_counts"]) == 240

    # Listed, readable, and its content is the file, byte for byte, with its hash.
    listed = api.http.get("/api/v1/datasets").json()
    assert d["id"] in [x["id"] for x in listed["data"]]
    assert api.http.get(f"/api/v1/datasets/{d['id']}").json()["sha256"] == d["sha256"]
    got = api.http.get(f"/api/v1/datasets/{d['id']}/content")
    assert got.status_code == 200 and got.content == content
    assert got.headers["x-content-sha256"] == d["sha256"]
    assert api.http.get(f"/api/v1/datasets/{d['id']}").json()["downloads"] == 1
    blob = api.data_dir / "artifacts" / "datasets" / d["sha256"][:2] / f"{d['sha256']}.npz"
    assert blob.read_bytes() == content

    # The same file again is the same dataset, stored once.
    again = upload(api, "other-name.npz", content)
    assert again.status_code == 200 and again.json()["id"] == d["id"]
    assert api.http.get("/api/v1/datasets").json()["count"] == listed["count"]


def test_a_csv_upload_one_hot_encodes_text_features_and_names_its_classes(api: Api) -> None:
    response = upload(api, "pets.csv", good_csv(), label_column="kind", name="pets")
    assert response.status_code == 201, response.text
    d = response.json()
    assert d["format"] == "csv" and d["label_column"] == "kind" and d["name"] == "pets"
    assert d["shapes"] == {"x_train": [120, 5], "y_train": [120]}
    assert d["features"] == ["size", "age", "color=blue", "color=green", "color=red"]
    assert d["class_names"] == ["cat", "dog"] and d["class_counts"] == [60, 60]

    # The same bytes read with another label column are another dataset (one file on disk).
    other = upload(api, "pets.csv", good_csv(), label_column="age")
    assert other.status_code == 201 and other.json()["id"] != d["id"]
    assert other.json()["classes"] == 7
    assert other.json()["sha256"] == d["sha256"]


def pickled() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.array([{"a": 1}] * 10, dtype=object), y_train=np.arange(10) % 2)
    return buffer.getvalue()


def with_nan() -> bytes:
    x = np.ones((50, 4), np.float32)
    x[7, 2] = np.nan
    return npz_bytes(x_train=x, y_train=np.arange(50) % 2)


BAD_FILES = {
    "pickled object array": (
        "bad.npz",
        pickled,
        "x_train holds Python objects (a pickled object array)",
    ),
    "mismatched lengths": (
        "bad.npz",
        lambda: npz_bytes(x_train=np.ones((50, 4)), y_train=np.arange(49) % 2),
        "x_train has 50 examples but y_train has 49 labels",
    ),
    "NaN": ("bad.npz", with_nan, "x_train holds 1 NaN or infinite value(s)"),
    "truncated zip": (
        "bad.npz",
        lambda: good_npz()[:-200],
        "not a readable .npz file (truncated or corrupt",
    ),
    "label out of range": (
        "bad.npz",
        lambda: npz_bytes(x_train=np.ones((50, 4)), y_train=np.arange(50) * 1000),
        "y_train holds the label 49000; labels must be integers in [0, 999]",
    ),
    "negative label": (
        "bad.npz",
        lambda: npz_bytes(x_train=np.ones((50, 4)), y_train=np.arange(50) % 3 - 1),
        "y_train holds a negative label (-1)",
    ),
    "val shape differs": (
        "bad.npz",
        lambda: npz_bytes(
            x_train=np.ones((50, 4)),
            y_train=np.arange(50) % 2,
            x_val=np.ones((10, 5)),
            y_val=np.arange(10) % 2,
        ),
        "x_val examples have shape (5,) but x_train's have (4,)",
    ),
    "csv without the label column": (
        "bad.csv",
        lambda: b"a,b\n1,2\n3,4\n",
        "bad.csv has no column 'label'",
    ),
    "csv with a missing value": (
        "bad.csv",
        lambda: b"a,b,label\n1,2,0\n3,,1\n",
        "column 'b' has 1 missing or non-finite",
    ),
    "not a dataset file": ("notes.txt", lambda: b"hello", "must be a .npz or .csv file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_is_refused_with_its_reason_and_nothing_is_stored(
    api: Api, case: str
) -> None:
    name, make, message = BAD_FILES[case]
    before_count = api.http.get("/api/v1/datasets").json()["count"]
    before_files = stored_files(api)
    response = upload(api, name, make())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] in ("file", "label_column")
    assert message in body["errors"][0]["reason"], body
    assert api.http.get("/api/v1/datasets").json()["count"] == before_count
    assert stored_files(api) == before_files


def test_a_file_past_the_size_limit_is_refused_with_413_and_nothing_stored(make_api) -> None:
    api = make_api("sqlite", HPSEARCH_MAX_UPLOAD_BYTES="100000")
    big = npz_bytes(x_train=np.ones((2_000, 20), np.float32), y_train=np.arange(2_000) % 2)
    assert len(big) > 100_000
    # With a Content-Length: refused before the body is read.
    response = upload(api, "big.npz", big)
    assert response.status_code == 413
    reason = response.json()["errors"][0]["reason"]
    assert "passes the limit of 100,000 bytes" in reason and "HPSEARCH_MAX_UPLOAD_BYTES" in reason
    # Without one (a chunked stream): refused as the count passes the limit.
    body, content_type = multipart_body("big.npz", big)

    def chunks() -> Any:
        for i in range(0, len(body), 16_384):
            yield body[i : i + 16_384]

    streamed = api.http.post(
        "/api/v1/datasets",
        content=chunks(),
        headers={"Content-Type": content_type},
    )
    assert streamed.status_code == 413
    # Below the limit, the same service takes a file.
    assert upload(api, "small.npz", good_npz(n=100)).status_code == 201
    assert api.http.get("/api/v1/datasets").json()["count"] == 1
    assert len(stored_files(api)) == 1


def test_a_study_names_an_uploaded_dataset_by_id_and_an_unknown_id_is_refused(api: Api) -> None:
    d = upload(api, "for-spec.npz", good_npz(seed=5)).json()
    missing = api.http.post(
        "/api/v1/studies", json=spec("on-missing", dataset={"id": "ds_0123456789abcdef"})
    )
    assert missing.status_code == 422
    assert missing.json()["errors"] == [
        {
            "field": "dataset.id",
            "reason": "no uploaded dataset with id 'ds_0123456789abcdef' "
            "(GET /api/v1/datasets lists them; POST one there)",
        }
    ]
    relabelled = api.http.post(
        "/api/v1/studies",
        json=spec("relabelled", dataset={"id": d["id"], "label_column": "y"}),
    )
    assert relabelled.status_code == 422
    assert relabelled.json()["errors"][0]["field"] == "dataset.label_column"
    ok = api.http.post(
        "/api/v1/studies", json=spec("on-upload", dataset={"id": d["id"], "split_seed": 3})
    )
    assert ok.status_code == 201, ok.text
    shown = api.http.get(f"/api/v1/datasets/{d['id']}").json()
    assert shown["studies"] == [{"id": ok.json()["id"], "name": "on-upload", "status": "queued"}]
    api.http.delete(f"/api/v1/studies/{ok.json()['id']}")


def test_delete_is_refused_while_a_study_uses_the_dataset(api: Api) -> None:
    content = good_npz(seed=9)
    d = upload(api, "in-use.npz", content).json()
    study = api.http.post("/api/v1/studies", json=spec("uses-it", dataset={"id": d["id"]})).json()

    refused = api.http.delete(f"/api/v1/datasets/{d['id']}")
    assert refused.status_code == 409
    assert "used by the active study 'uses-it'" in refused.json()["detail"]
    assert api.http.get(f"/api/v1/datasets/{d['id']}/content").content == content

    assert api.http.post(f"/api/v1/studies/{study['id']}/stop").status_code == 200
    assert api.http.delete(f"/api/v1/datasets/{d['id']}").status_code == 204
    assert api.http.get(f"/api/v1/datasets/{d['id']}").status_code == 404
    assert api.http.get(f"/api/v1/datasets/{d['id']}/content").status_code == 404
    sha = d["sha256"]
    assert not (api.data_dir / "artifacts" / "datasets" / sha[:2] / f"{sha}.npz").exists()
    # The stopped study cannot resume without its data; uploading it again brings it back.
    resumed = api.http.post(f"/api/v1/studies/{study['id']}/resume")
    assert resumed.status_code == 409 and "which was deleted" in resumed.json()["detail"]
    assert upload(api, "in-use.npz", content).json()["id"] == d["id"]
    assert api.http.post(f"/api/v1/studies/{study['id']}/resume").status_code == 200
    api.http.post(f"/api/v1/studies/{study['id']}/stop")


def test_a_crash_mid_upload_stores_nothing_and_its_leftover_is_swept(make_api) -> None:
    api = make_api("sqlite", HPSEARCH_UPLOAD_STALE_SECONDS="3")
    content = good_npz(seed=11, n=20_000)
    incoming = api.data_dir / "artifacts" / "incoming"
    with half_sent_upload(api, content):
        api.kill()  # mid-upload: half the file received
    api.start()
    assert api.http.get("/api/v1/datasets").json()["count"] == 0
    assert not list((api.data_dir / "artifacts" / "datasets").glob("*/*"))
    wait_for(lambda: not any(incoming.iterdir()), 60, "the reaper to sweep the partial upload")
    # The service takes the same file whole afterwards.
    assert upload(api, "c.npz", content).status_code == 201


def test_bad_requests_name_the_field(api: Api) -> None:
    no_file = api.http.post("/api/v1/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert no_file.status_code == 422
    assert no_file.json()["errors"][0]["field"] in ("file", "other")
    json_body = api.http.post("/api/v1/datasets", json={"file": "x"})
    assert json_body.status_code == 422
    assert "multipart/form-data" in json_body.json()["errors"][0]["reason"]
    npz_label = upload(api, "a.npz", good_npz(), label_column="y")
    assert npz_label.status_code == 422
    assert npz_label.json()["errors"][0]["field"] == "label_column"
    bad_id = api.http.get("/api/v1/datasets/../../etc/passwd")
    assert bad_id.status_code in (404, 422)
    assert api.http.get("/api/v1/datasets/ds_not-an-id").status_code == 422


def test_a_full_disk_answers_507_and_keeps_nothing(make_api, tmp_path) -> None:
    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], check=True)
    try:
        api = make_api("sqlite", HPSEARCH_ARTIFACTS_DIR=str(small))
        big = npz_bytes(x_train=np.ones((100_000, 4), np.float32), y_train=np.arange(100_000) % 2)
        response = upload(api, "big.npz", big)
        assert response.status_code == 507, response.text
        assert "the service has no room for this file" in response.json()["errors"][0]["reason"]
        assert not [p for p in small.rglob("*") if p.is_file() and p.name != ".lock"]
        # Room for a small one: the service goes on.
        assert upload(api, "small.npz", good_npz(n=100)).status_code == 201
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)


def test_an_upload_its_client_abandons_leaves_nothing(api: Api) -> None:
    incoming = api.data_dir / "artifacts" / "incoming"
    before = api.http.get("/api/v1/datasets").json()["count"]
    with half_sent_upload(api, good_npz(seed=12, n=20_000)):
        pass  # the client hangs up
    wait_for(lambda: not any(incoming.glob("*.part")), 10, "the partial upload to be deleted")
    assert api.http.get("/api/v1/datasets").json()["count"] == before
    assert "Traceback" not in Path(api.log).read_text()


def test_every_text_field_is_checked_before_the_database_sees_it(api: Api) -> None:
    """Issue 16, finding 4: a 300-character label column passed the checks and failed on
    PostgreSQL's VARCHAR(200) with a 500, leaving its file in the store until the sweep."""
    before_count = api.http.get("/api/v1/datasets").json()["count"]
    before_files = stored_files(api)
    long_label = "y" * 300
    csv = f"a,{long_label}\n1,0\n2,1\n3,0\n".encode()
    cases = [
        (
            {"label_column": long_label},
            "label_column",
            "must be at most 200 bytes (UTF-8), got 300",
        ),
        ({"name": "n" * 201}, "name", "must be at most 200 bytes (UTF-8), got 201"),
        ({"name": "é" * 101}, "name", "must be at most 200 bytes (UTF-8), got 202"),
        (
            {"label_column": "a\tb"},
            "label_column",
            "must be printable characters (no control characters)",
        ),
    ]
    for form, field, reason in cases:
        response = upload(api, "long.csv", csv, **form)
        assert response.status_code == 422, (form, response.text)
        assert {"field": field, "reason": reason} in response.json()["errors"], form
    assert api.http.get("/api/v1/datasets").json()["count"] == before_count
    assert stored_files(api) == before_files
    # A name taken from a long file name is cut to fit rather than refused.
    named = upload(api, "f" * 300 + ".csv", b"a,label\n1,0\n2,1\n3,0\n")
    assert named.status_code == 201, named.text
    assert named.json()["name"] == "f" * 200


def test_a_row_the_database_refuses_leaves_no_file_in_the_store(make_api) -> None:
    """The file enters the store before its row is written: when the row fails (here the
    database shuts the session down as it is written), the file goes at once."""
    api = make_api("postgresql")
    execute(
        api,
        "CREATE FUNCTION refuse_dataset() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'going down' USING ERRCODE = '57P01'; END $$ LANGUAGE plpgsql;"
        "CREATE TRIGGER refuse BEFORE INSERT ON hps_datasets "
        "FOR EACH ROW EXECUTE FUNCTION refuse_dataset()",
    )
    response = upload(api, "points.npz", good_npz(seed=21))
    assert response.status_code == 503, response.text
    assert stored_files(api) == []
    execute(api, "DROP TRIGGER refuse ON hps_datasets")
    assert upload(api, "points.npz", good_npz(seed=21)).status_code == 201
    assert len(stored_files(api)) == 1
