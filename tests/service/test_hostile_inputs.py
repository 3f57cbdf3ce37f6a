"""Hostile input against a real API on SQLite and PostgreSQL (issue 16, findings 1, 4 and 5):
each gets a 422 that names the field and the reason, never a 500, and leaves nothing behind: no
study row, no Optuna study, no trial changed. Fake workers (the raw protocol) hold the leases."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import String

from service.db.models import Base
from tests.hpsearch.test_datafiles import corrupt_compressed_npz
from tests.service.test_protocol import METRICS, FakeWorker, create
from tests.support import Api, execute, query, spec

DEPTH_REASON = (
    "nested more than 32 levels deep (objects and arrays); no field of this API needs more than "
    "a few"
)
NUL_REASON = (
    "holds a NUL character (\\u0000), which no field of this API accepts "
    "(PostgreSQL cannot store one)"
)


def post(api: Api, path: str, body: Any) -> httpx.Response:
    """POST ``body``: a JSON value, or JSON text as it is (what no encoder writes)."""
    content = body if isinstance(body, str) else json.dumps(body)
    return api.http.post(path, content=content, headers={"Content-Type": "application/json"})


def error_of(response: httpx.Response) -> dict[str, str]:
    """The first field error of a 422."""
    assert response.status_code == 422, response.text
    return dict(response.json()["errors"][0])


def nested(levels: int) -> str:
    """JSON text: a number inside ``levels`` alternating arrays and objects."""
    text = "1"
    for level in range(levels):
        text = f'{{"a": {text}}}' if level % 2 else f"[{text}]"
    return text


def stored(api: Api) -> tuple[int, int]:
    """(our studies, Optuna's studies) in the database."""
    ours = query(api, "SELECT count(*) AS n FROM hps_studies")[0]["n"]
    optuna = query(api, "SELECT count(*) AS n FROM studies")[0]["n"]
    return int(ours), int(optuna)


def stop_others(api: Api) -> None:
    """Stop every queued or running study, so that a fake worker's next trial is the next
    study's (one accepted where it should not have been, on older code, stays out of the way)."""
    for study in api.http.get("/api/v1/studies", params={"limit": 1000}).json()["data"]:
        if study["status"] in ("queued", "running"):
            api.http.post(f"/api/v1/studies/{study['id']}/stop")


@pytest.fixture
def leased(api: Api) -> Iterator[tuple[FakeWorker, dict[str, Any]]]:
    """A one-trial study whose trial a fake worker holds; finished afterwards."""
    name = f"leased-{len(query(api, 'SELECT id FROM hps_studies'))}"
    stop_others(api)
    create(api, name, n_trials=1)
    worker = FakeWorker(api.url, f"holder-{name}")
    trial = worker.ask()
    assert trial is not None and trial["study_name"] == name
    yield worker, trial
    worker.tell(trial)


# -- finding 1: a trial limit no worker can wait for ---------------------------------------------


@pytest.mark.parametrize("seconds", [2_147_454, 1e7, 1e308])
def test_a_trial_timeout_no_worker_can_wait_for_is_refused(api: Api, seconds: float) -> None:
    before = stored(api)
    refused = post(api, "/api/v1/studies", spec("a-long-trial", trial_timeout_seconds=seconds))
    error = error_of(refused)
    assert error["field"] == "trial_timeout_seconds"
    assert error["reason"].startswith("at most 604,800 seconds (7 days), got "), error
    assert stored(api) == before


def test_the_longest_trial_timeout_reaches_the_worker(api: Api) -> None:
    stop_others(api)
    create(api, "a-week-per-trial", n_trials=1, trial_timeout_seconds=604_800)
    worker = FakeWorker(api.url, "patient")
    trial = worker.ask()
    assert trial is not None and trial["settings"]["timeout_seconds"] == 604_800
    assert worker.tell(trial).status_code == 200


# -- finding 4: no 500, and nothing left behind ---------------------------------------------------


def test_a_study_time_limit_past_a_date_is_refused_and_leaves_no_optuna_study(api: Api) -> None:
    before = stored(api)
    refused = post(api, "/api/v1/studies", spec("far-future", timeout_seconds=1e12))
    assert error_of(refused) == {
        "field": "timeout_seconds",
        "reason": "at most 31,536,000 seconds (365 days: leave it out for no limit), got 1e+12",
    }
    assert stored(api) == before


@pytest.mark.parametrize("levels", [33, 256, 900])
def test_a_spec_nested_too_deep_is_a_422_naming_its_section(api: Api, levels: int) -> None:
    before = stored(api)
    for section in ("dataset", "model", "training"):
        body = json.dumps(spec(f"deep-{section}")).replace(
            f'"{section}": {{', f'"{section}": {{"deep": {nested(levels)}, ', 1
        )
        assert error_of(post(api, "/api/v1/studies", body)) == {
            "field": section,
            "reason": DEPTH_REASON,
        }
    assert stored(api) == before


def test_a_second_content_type_header_does_not_take_a_body_past_the_depth_check(
    api: Api,
) -> None:
    """The application reads the first Content-Type; the guard read the last, so a trailing
    ``text/plain`` let a 900-level body through to the parser (review of issue 16)."""
    before = stored(api)
    body = json.dumps(spec("two-types")).replace(
        '"model": {', f'"model": {{"deep": {nested(900)}, ', 1
    )
    answer = api.http.post(
        "/api/v1/studies",
        content=body,
        headers=[("Content-Type", "application/json"), ("Content-Type", "text/plain")],
    )
    assert error_of(answer) == {"field": "model", "reason": DEPTH_REASON}
    assert stored(api) == before


def protocol_bodies(worker: FakeWorker, trial: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A valid body for each JSON endpoint of the worker protocol, for the trial held."""
    lease = {"worker_id": worker.id, "attempt": trial["attempt"]}
    result = {"state": "complete", "epochs_run": 1, "best_value": 0.5, "final_value": 0.5}
    bodies = {
        "/api/v1/workers/ask": {"worker_id": worker.id, "hostname": "box"},
        f"/api/v1/trials/{trial['trial_id']}/report": {**lease, "epoch": 1, "metrics": METRICS},
        f"/api/v1/trials/{trial['trial_id']}/heartbeat": lease,
        f"/api/v1/trials/{trial['trial_id']}/tell": {**lease, "result": result},
        f"/api/v1/trials/{trial['trial_id']}/release": {
            **lease,
            "cause": "stopping",
            "reason": "stopping",
        },
    }
    return bodies


def test_every_json_endpoint_refuses_deep_nesting_and_nul_by_field(
    api: Api, leased: tuple[FakeWorker, dict[str, Any]]
) -> None:
    worker, trial = leased
    paths = api.http.get("/openapi.json").json()["paths"]
    bodies = {
        "/api/v1/studies": spec("guarded"),
        "/api/v1/session": {"token": "hpsu_not-a-token"},
        **protocol_bodies(worker, trial),
    }
    refused = 0
    for path, body in bodies.items():
        if re.sub(r"/trials/\d+/", "/trials/{trial_id}/", path) not in paths:
            continue  # an endpoint this version does not have (release, before it lands)
        for field in body:
            if field in ("worker_id", "attempt"):
                continue  # the lease: a change would only be refused as another's
            deep = json.dumps({**body, field: "@"}).replace('"@"', nested(40))
            assert error_of(post(api, path, deep)) == {"field": field, "reason": DEPTH_REASON}
            nul = {**body, field: "a\u0000b"}
            assert error_of(post(api, path, nul)) == {"field": field, "reason": NUL_REASON}
            refused += 2
    assert refused >= 20
    # The trial was held throughout, untouched: a good report and tell still land.
    assert worker.report(trial, 1, 0.75).status_code == 200
    detail = api.http.get(f"/api/v1/studies/{trial['study_id']}/trials/{trial['number']}").json()
    assert [e["val_accuracy"] for e in detail["epochs"]] == [0.75]
    assert query(api, "SELECT id FROM hps_studies WHERE name = 'guarded'") == []


@pytest.mark.parametrize(
    ("endpoint", "change", "field"),
    [
        ("report", {"epoch": 2**31}, "epoch"),  # PostgreSQL: integer out of range
        ("report", {"epoch": 2**70}, "epoch"),  # SQLite: too large for an INTEGER
        ("report", {"attempt": 2**63}, "attempt"),
        ("report", {"worker_id": "w" * 10_000}, "worker_id"),
        ("report", ("metrics", '"loss": NaN'), "metrics.loss"),  # SQLite stores NaN as NULL
        ("report", ("metrics", '"val_loss": -Infinity'), "metrics.val_loss"),
        ("heartbeat", {"attempt": 2**70}, "attempt"),
        ("tell", {"result": {"state": "complete", "epochs_run": 2**40}}, "result.epochs_run"),
        ("tell", ("result", '"best_value": Infinity'), "result.best_value"),
    ],
)
def test_protocol_values_the_database_cannot_hold_are_422_and_change_nothing(
    api: Api,
    leased: tuple[FakeWorker, dict[str, Any]],
    endpoint: str,
    change: Any,
    field: str,
) -> None:
    worker, trial = leased
    path = f"/api/v1/trials/{trial['trial_id']}/{endpoint}"
    body: Any = protocol_bodies(worker, trial)[path]
    if isinstance(change, tuple):  # NaN and Infinity: JSON text that no encoder writes
        key, member = change
        text = json.dumps({k: v for k, v in body.items() if k != key})
        body = f"{text[:-1]}, {json.dumps(key)}: {json.dumps(body[key])[:-1]}, {member}}}}}"
    else:
        body = {**body, **change}
    assert error_of(post(api, path, body))["field"] == field
    # The lease is still the worker's, and nothing was stored: its first report is epoch 1.
    assert worker.report(trial, 1, 0.25).status_code == 200
    detail = api.http.get(f"/api/v1/studies/{trial['study_id']}/trials/{trial['number']}").json()
    assert detail["state"] == "running" and [e["epoch"] for e in detail["epochs"]] == [1]


# Every bounded text column of ours, and what writes it: the API field whose check keeps its
# values within the column (probed below with one character too many), or the service itself.
TEXT_COLUMNS: dict[str, str | None] = {
    "hps_studies.name": "studies:name",
    "hps_studies.uid": None,  # hpsearch-<32 hex>
    "hps_studies.status": None,
    "hps_studies.dataset_id": "studies:dataset.id",
    "hps_datasets.id": None,
    "hps_datasets.name": "upload:name",
    "hps_datasets.sha256": None,
    "hps_datasets.format": "upload:format",
    "hps_datasets.label_column": "upload:label_column",
    "hps_trials.state": None,
    "hps_trials.worker_id": "ask:worker_id",
    "hps_workers.id": "ask:worker_id",
    "hps_workers.hostname": "ask:hostname",
    "hps_tokens.id": None,
    "hps_tokens.name": None,  # `hpsearch token create NAME` checks it (1 to 200 characters)
    "hps_tokens.kind": None,
    "hps_tokens.token_hash": None,
    "hps_tokens.hint": None,
    "hps_trial_releases.worker_id": "release:worker_id",
    "hps_trial_releases.cause": None,  # "stopping" or "crashed", by the schema
    "hps_trial_releases.outcome": None,
}


def upload_with(field: str, value: str) -> tuple[bytes, str]:
    """A multipart upload of a small CSV with one text field set."""
    boundary = "hps-hostile"
    parts = [
        ("file", 'filename="t.csv"', b"x,label\n1,0\n2,1\n3,0\n4,1\n"),
        (field, "", value.encode()),
    ]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        + (f"; {extra}".encode() if extra else b"")
        + b"\r\n\r\n"
        + content
        + b"\r\n"
        for name, extra, content in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_every_bounded_text_column_is_checked_before_the_database(api: Api) -> None:
    """One character past each column's length is a 422 naming the field, on PostgreSQL (which
    refuses it) as on SQLite (which would store it); a new bounded column must be listed."""
    lengths = {
        f"{table.name}.{column.name}": column.type.length
        for table in Base.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String) and column.type.length
    }
    assert set(lengths) <= set(TEXT_COLUMNS), set(lengths) - set(TEXT_COLUMNS)
    paths = api.http.get("/openapi.json").json()["paths"]
    for column, writer in TEXT_COLUMNS.items():
        if writer is None or column not in lengths:
            continue
        endpoint, field = writer.split(":")
        value = "w" * (lengths[column] + 1)
        if endpoint == "upload":
            body, content_type = upload_with(field, value)
            answer = api.http.post(
                "/api/v1/datasets", content=body, headers={"Content-Type": content_type}
            )
        elif endpoint == "studies":
            raw = spec("too-long")
            if field == "name":
                raw["name"] = value
            else:
                raw["dataset"] = {"id": value}
            answer = post(api, "/api/v1/studies", raw)
        elif endpoint == "ask":
            body_ = {"worker_id": "w", "hostname": "h", field: value}
            answer = post(api, "/api/v1/workers/ask", body_)
        else:
            if "/api/v1/trials/{trial_id}/release" not in paths:
                continue  # before the release endpoint lands
            release = {"worker_id": value, "attempt": 1, "cause": "stopping", "reason": "x"}
            answer = post(api, "/api/v1/trials/1/release", release)
        assert answer.status_code == 422, (column, answer.text)
        fields = [e["field"] for e in answer.json()["errors"]]
        assert field in fields, (column, fields)


def test_a_hostname_of_255_characters_is_stored_and_256_refused(api: Api) -> None:
    """PostgreSQL counts characters, not bytes: 255 two-byte characters fit in VARCHAR(255)."""
    fits = api.http.post("/api/v1/workers/ask", json={"worker_id": "wide", "hostname": "é" * 255})
    assert fits.status_code in (200, 204), fits.text
    assert query(api, "SELECT hostname FROM hps_workers WHERE id = 'wide'") == [
        {"hostname": "é" * 255}
    ]
    too_long = {"worker_id": "wider", "hostname": "é" * 256}
    assert error_of(post(api, "/api/v1/workers/ask", too_long))["field"] == "hostname"


REFUSE_ON_SQLITE = (
    "CREATE TRIGGER hps_test_refuse BEFORE INSERT ON hps_studies "
    "BEGIN SELECT hps_test_no_such_function(); END"
)
REFUSE_ON_POSTGRESQL = (
    "CREATE FUNCTION hps_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "RAISE EXCEPTION 'the database is shutting down' USING ERRCODE = '57P01'; END $$; "
    "CREATE TRIGGER hps_test_refuse BEFORE INSERT ON hps_studies "
    "FOR EACH ROW EXECUTE FUNCTION hps_test_refuse()"
)


def test_a_creation_the_database_fails_leaves_no_optuna_study_or_row(api: Api) -> None:
    """The database fails after the Optuna study was made (a trigger plays a database going
    down at that moment): the study is not created, its Optuna study is removed, and once the
    database is back the same spec is created."""
    before = stored(api)
    sqlite = api.database_url.startswith("sqlite")
    execute(api, REFUSE_ON_SQLITE if sqlite else REFUSE_ON_POSTGRESQL)
    try:
        failed = post(api, "/api/v1/studies", spec("created-on-retry"))
    finally:
        execute(api, "DROP TRIGGER hps_test_refuse" + ("" if sqlite else " ON hps_studies"))
    assert failed.status_code == 503 and failed.headers["Retry-After"], failed.text
    assert stored(api) == before
    created = post(api, "/api/v1/studies", spec("created-on-retry"))
    assert created.status_code == 201, created.text
    assert stored(api) == (before[0] + 1, before[1] + 1)
    api.http.delete(f"/api/v1/studies/{created.json()['id']}")


# SQLite stores any length and any integer: only PostgreSQL has such a refusal.
@pytest.mark.parametrize("api", ["postgresql"], indirect=True)
def test_a_value_the_database_refuses_is_a_422_and_leaves_nothing(api: Api) -> None:
    """Should a check be missing, PostgreSQL's refusal of a value (too long, out of range) is
    still bad input: a 422, the Optuna study removed, the gap logged."""
    before = stored(api)
    execute(
        api,
        "CREATE FUNCTION hps_test_too_long() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'value too long for type character varying(200)' "
        "USING ERRCODE = '22001'; END $$; "
        "CREATE TRIGGER hps_test_too_long BEFORE INSERT ON hps_studies "
        "FOR EACH ROW EXECUTE FUNCTION hps_test_too_long()",
    )
    try:
        refused = post(api, "/api/v1/studies", spec("missing-a-check"))
    finally:
        execute(api, "DROP TRIGGER hps_test_too_long ON hps_studies")
    assert error_of(refused) == {
        "field": "(body)",
        "reason": "a value does not fit what the database stores (value too long for type "
        "character varying(200)); nothing was changed",
    }
    assert stored(api) == before
    assert "a value the database cannot store reached it: answered 422" in api.log.read_text()


def test_a_corrupt_compressed_npz_upload_is_a_422_naming_the_file(api: Api, tmp_path: Path) -> None:
    """A deflate stream with flipped bytes raised zlib.error, which zipfile does not wrap: a 500
    (review of issue 16). Now a refusal that names ``file``, and no dataset row is left."""
    path = corrupt_compressed_npz(tmp_path / "corrupt.npz")
    before = query(api, "SELECT count(*) AS n FROM hps_datasets")[0]["n"]
    with path.open("rb") as f:
        answer = api.http.post("/api/v1/datasets", files={"file": ("corrupt.npz", f)})
    error = error_of(answer)
    assert error["field"] == "file"
    assert "corrupt.npz: not a readable .npz file (truncated or corrupt" in error["reason"]
    assert query(api, "SELECT count(*) AS n FROM hps_datasets")[0]["n"] == before


def test_no_hostile_input_left_a_traceback_in_the_log(api: Api) -> None:
    """Runs last: every refusal above was an answer, not an error the API logged."""
    log = api.log.read_text()
    assert "Traceback" not in log, log[-4000:]
