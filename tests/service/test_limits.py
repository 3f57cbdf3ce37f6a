"""Configured maxima with clear errors (body size, page size, n_trials, epochs, model size,
concurrent studies), and the worker protocol kept answering while user requests crowd the API
with slow and huge requests. Real uvicorn processes; raw sockets play the slow clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.test_datasets import multipart_body
from tests.service.test_protocol import FakeWorker, run_study
from tests.support import Api, query, spec, wait_for

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    """The one field error of a refusal with ``status``."""
    assert response.status_code == status, response.text
    (error,) = response.json()["errors"]
    return dict(error)


def test_a_json_body_over_the_limit_is_refused_before_it_is_read(make_api: Any) -> None:
    api = make_api("sqlite", HPSEARCH_MAX_REQUEST_BYTES="65536")
    huge = spec("huge", search_space={"dropout": {"type": "categorical", "choices": [0.1] * 20000}})
    refused = api.http.post("/api/v1/studies", json=huge)
    assert error_of(refused, 413) == {
        "field": "(body)",
        "reason": "the request body passes the limit of 65,536 bytes (HPSEARCH_MAX_REQUEST_BYTES)",
    }

    # Chunked, with no Content-Length to refuse it by: cut off once it passes the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked", "x": "'
        for _ in range(1000):
            yield b"a" * 1024

    refused = api.http.post(
        "/api/v1/studies", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert error_of(refused, 413)["field"] == "(body)"
    assert api.http.get("/api/v1/studies").json()["count"] == 0
    # The worker protocol has the same limit (a report is a few hundred bytes).
    big_report = {"worker_id": "w", "attempt": 1, "epoch": 1, "metrics": {"a" * 70_000: 1.0}}
    assert api.http.post("/api/v1/trials/1/report", json=big_report).status_code == 413


def test_page_size_ids_and_offsets_have_maxima(make_api: Any) -> None:
    api = make_api("postgresql", HPSEARCH_MAX_PAGE_SIZE="20")
    for path in ("/api/v1/studies", "/api/v1/datasets"):
        refused = api.http.get(path, params={"limit": 21})
        assert error_of(refused, 422) == {
            "field": "limit",
            "reason": "at most 20 rows per page (HPSEARCH_MAX_PAGE_SIZE) (got 21)",
        }
        assert api.http.get(path, params={"limit": 20}).status_code == 200
    # Past a 32-bit id or offset: a clear 422, never a database error.
    for path, params in (
        ("/api/v1/studies/4294967296", {}),
        ("/api/v1/studies", {"offset": 2**40}),
        ("/api/v1/studies/1/trials/99999999999", {}),
    ):
        response = api.http.get(path, params=params)
        assert response.status_code == 422, (path, response.text)
        assert "less than or equal to 2147483647" in response.json()["detail"]


def test_model_and_synthetic_data_size_have_maxima(make_api: Any) -> None:
    api = make_api("sqlite", HPSEARCH_MAX_MODEL_PARAMS="1000000")
    too_big = spec("too-big", dataset={"name": "mnist_5k"}, model={"hidden_units": [2048, 2048]})
    error = error_of(api.http.post("/api/v1/studies", json=too_big), 422)
    assert error["field"] == "model.hidden_units"
    # 784*2048 + 2048 + 2048*2048 + 2048 + 2048*10 + 10 (no BN: biases) = 5,824,522
    assert error["reason"].startswith(
        "the model would have 5,824,522 weights on this dataset (28x28x1 inputs, 10 classes), "
        "more than 1,000,000 (HPSEARCH_MAX_MODEL_PARAMS)"
    )
    # The largest corner of the space counts: a cnn whose kernel is searched up to 15.
    cnn = spec(
        "cnn-kernel",
        dataset={"name": "digits"},
        model={"architecture": "cnn", "conv_filters": [256, 256], "hidden_units": [64]},
        search_space={"kernel_size": {"type": "int", "low": 1, "high": 15}},
    )
    assert error_of(api.http.post("/api/v1/studies", json=cnn), 422)["field"] == (
        "model.conv_filters"
    )
    cnn["search_space"]["kernel_size"]["high"] = 3
    assert api.http.post("/api/v1/studies", json=cnn).status_code == 201
    huge_data = spec(
        "huge-data",
        dataset={"name": "synthetic", "n_samples": 10_000_000, "n_features": 100},
    )
    error = error_of(api.http.post("/api/v1/studies", json=huge_data), 422)
    assert error["field"] == "dataset.n_samples"
    assert "at most 50,000,000 values, got 10,000,000 x 100" in error["reason"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_studies_have_a_maximum(make_api: Any, backend: str) -> None:
    api = make_api(backend, HPSEARCH_MAX_ACTIVE_STUDIES="2")
    first, second = (
        api.http.post("/api/v1/studies", json=spec(f"active-{i}")).json() for i in (1, 2)
    )
    refused = api.http.post("/api/v1/studies", json=spec("active-3"))
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "2 studies are queued or running, the most this service runs at once "
        "(HPSEARCH_MAX_ACTIVE_STUDIES=2): stop one or wait for one to finish"
    )
    assert api.http.post(f"/api/v1/studies/{first['id']}/stop").status_code == 200
    assert api.http.post("/api/v1/studies", json=spec("active-3")).status_code == 201
    # Resuming counts too.
    resumed = api.http.post(f"/api/v1/studies/{first['id']}/resume")
    assert resumed.status_code == 409 and "HPSEARCH_MAX_ACTIVE_STUDIES" in resumed.text
    names = [s["name"] for s in api.http.get("/api/v1/studies").json()["data"]]
    assert sorted(names) == ["active-1", "active-2", "active-3"]
    assert second["status"] == "queued"


# -- slow and stalled requests ---------------------------------------------------------------------


@contextlib.contextmanager
def stalled(api: Api, path: str, head: bytes, length: int, content_type: str) -> Iterator[Any]:
    """A request whose headers and first ``head`` bytes arrive, and then nothing more."""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        auth = f"Authorization: Bearer {api.token}\r\n" if api.token else ""
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
            + head
        )
        yield sock


def answer_of(sock: socket.socket, timeout: float) -> str:
    """The status line and body of the answer on ``sock`` (within ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def test_a_body_that_stalls_is_dropped_with_408(make_api: Any) -> None:
    api = make_api("sqlite", HPSEARCH_REQUEST_BODY_SECONDS="1")
    body, content_type = multipart_body("slow.npz", b"x" * 100_000)
    with (
        stalled(api, "/api/v1/studies", b'{"name": "slow", ', 500, "application/json") as json_,
        stalled(api, "/api/v1/datasets", body[:50_000], len(body), content_type) as upload,
    ):
        json_answer, upload_answer = answer_of(json_, 10), answer_of(upload, 10)
    assert json_answer.startswith("HTTP/1.1 408"), json_answer
    assert "did not arrive within 1 s (HPSEARCH_REQUEST_BODY_SECONDS)" in json_answer
    assert upload_answer.startswith("HTTP/1.1 408"), upload_answer
    assert '"field":"file"' in upload_answer and "nothing was stored" in upload_answer
    assert not list((api.data_dir / "artifacts" / "incoming").glob("*.part"))
    assert api.http.get("/api/v1/studies").json()["count"] == 0


def test_slow_and_huge_user_requests_never_starve_the_worker_protocol(make_api: Any) -> None:
    """Every user slot held by a stalled upload, and a hundred slow JSON bodies on top: a user
    request waits its turn, while a worker asks, reports and finishes a whole study (a protocol
    client: what is at stake is the protocol's lane, not the training)."""
    api = make_api("postgresql", HPSEARCH_AUTH="on", HPSEARCH_USER_REQUEST_SLOTS="4")
    worker_token = api.create_token("box", "worker")
    study = api.http.post("/api/v1/studies", json=spec("crowded", n_trials=3)).json()
    body, content_type = multipart_body("crowd.npz", b"x" * 200_000)
    incoming = api.data_dir / "artifacts" / "incoming"
    with contextlib.ExitStack() as crowd:
        for _ in range(4):  # every user slot
            crowd.enter_context(
                stalled(api, "/api/v1/datasets", body[:100_000], len(body), content_type)
            )
        wait_for(lambda: len(list(incoming.glob("*.part"))) == 4, 20, "4 uploads in progress")
        for _ in range(100):  # slow bodies: they wait in the body limit, holding no slot
            crowd.enter_context(stalled(api, "/api/v1/studies", b"{", 5000, "application/json"))

        # A user request now waits for a slot...
        waited: dict[str, Any] = {}

        def user_request() -> None:
            started = time.monotonic()
            waited["status"] = api.http.get("/api/v1/studies", timeout=120).status_code
            waited["seconds"] = time.monotonic() - started

        reader = threading.Thread(target=user_request)
        reader.start()
        # ...while the worker protocol answers at once, and a worker runs the whole study.
        started = time.monotonic()
        asked = FakeWorker(api.url, "probe", worker_token).ask()
        ask_seconds = time.monotonic() - started
        assert asked is not None and asked["study_id"] == study["id"]
        assert run_study(api, "probe", token=worker_token) == 3  # the one asked for, then two

        def finished() -> bool:
            rows = query(api, f"SELECT status FROM hps_studies WHERE id = {study['id']}")
            return rows[0]["status"] == "completed"

        wait_for(finished, 240, "the study to complete behind the crowd")
        assert reader.is_alive(), waited  # still queued behind the stalled uploads
    reader.join(60)
    assert waited["status"] == 200
    assert ask_seconds < 5, ask_seconds
    trials = query(api, f"SELECT state FROM hps_trials WHERE study_id = {study['id']}")
    assert sorted(t["state"] for t in trials) == ["complete"] * 3
