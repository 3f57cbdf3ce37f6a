"""The protocol lane under a crowd of dashboard readers (issue 16, finding 7): user requests run
at a lower CPU priority than the worker protocol, so that training beside the API keeps its
CPU; trial pages answered from memory are never older than the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from service.api.middleware import Lanes
from tests.service.test_protocol import FakeWorker, create
from tests.support import free_port

# How far below the protocol's priority user requests run (service.api.middleware).
USER_LANE_NICE = 10

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial


def _nice() -> int:
    """This thread's own nice value (Linux: each thread has one)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _tasks(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def lanes_server() -> Iterator[str]:
    """A real uvicorn server, in this process, of a small app behind ``Lanes``: each endpoint
    answers the nice value of the thread that ran it."""
    app = FastAPI()

    @app.get("/api/v1/studies/{n}")
    def user_page(n: int) -> dict[str, Any]:
        return {"n": n, "nice": _nice()}

    @app.post("/api/v1/studies")
    async def user_post(request: Request) -> dict[str, Any]:
        return {"body": await request.json(), "nice": _nice()}

    @app.get("/api/v1/studies/{n}/trials.csv")
    def user_stream(n: int) -> StreamingResponse:
        return StreamingResponse((f"{i}\n" for i in range(n)), media_type="text/csv")

    @app.get("/api/v1/studies/{n}/fails")
    def user_fails(n: int) -> None:
        raise RuntimeError("a bug in a user endpoint")

    @app.post("/api/v1/trials/{n}/report")
    def report(n: int, body: dict[str, Any]) -> dict[str, Any]:
        return {"body": body, "nice": _nice()}

    app.add_middleware(Lanes, slots=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_user_requests_run_below_the_worker_protocols_cpu_priority(lanes_server: str) -> None:
    base = _nice()  # the server's loop thread started from this one, at this priority
    with httpx.Client(base_url=lanes_server, timeout=10) as http:
        pages = [http.get(f"/api/v1/studies/{n}").json() for n in range(5)]
        posted = http.post("/api/v1/studies", json={"name": "x" * 300_000}).json()
        reported = http.post("/api/v1/trials/7/report", json={"epoch": 1}).json()
    assert [p["n"] for p in pages] == list(range(5))
    assert {p["nice"] for p in pages} == {min(base + USER_LANE_NICE, 19)}
    # A body of several chunks, each received across the lanes.
    assert posted == {"body": {"name": "x" * 300_000}, "nice": min(base + USER_LANE_NICE, 19)}
    assert reported == {"body": {"epoch": 1}, "nice": base}


def test_the_user_lane_streams_answers_and_turns_a_bug_into_a_500(lanes_server: str) -> None:
    with httpx.Client(base_url=lanes_server, timeout=10) as http:
        csv = http.get("/api/v1/studies/20000/trials.csv")
        failed = http.get("/api/v1/studies/1/fails")
    # uvicorn closes a connection whose application raised, after the 500 is sent; a client that
    # reused it could race the close (ECONNRESET), so the next request opens its own.
    after = httpx.get(f"{lanes_server}/api/v1/studies/3", timeout=10)
    assert csv.status_code == 200
    assert csv.text.splitlines() == [str(i) for i in range(20000)]
    assert failed.status_code == 500
    assert after.json()["n"] == 3  # the lane outlives a failed request


def test_trial_pages_show_each_report_and_result_as_soon_as_it_is_stored(api: Any) -> None:
    """Pages answered from memory while the study is unchanged: a report, a result or a new
    trial is on the next read of every page (trial, trial list, study)."""
    study = create(api, "fresh-pages", n_trials=2, training={"epochs": 3})
    sid = study["id"]
    worker = FakeWorker(api.url, "lanes-fresh")
    trial = worker.ask()
    assert trial is not None
    listing = f"/api/v1/studies/{sid}/trials"
    cursors = [api.http.get(listing).json()["cursor"]]
    for epoch in (1, 2, 3):
        assert worker.report(trial, epoch, value=0.1 * epoch).status_code == 200
        for _ in range(3):  # the second and third reads come from memory
            page = api.http.get(f"/api/v1/studies/{sid}/trials/{trial['number']}").json()
            assert [e["val_accuracy"] for e in page["epochs"]] == [
                0.1 * e for e in range(1, epoch + 1)
            ]
            rows = api.http.get(listing).json()
            assert [r["epochs_run"] for r in rows["data"]] == [epoch]
        cursors.append(rows["cursor"])
    assert cursors == sorted(set(cursors))  # every report moved it on
    assert api.http.get(f"/api/v1/studies/{sid}").json()["finished"] == 0
    assert worker.tell(trial, value=0.3, epochs=3).status_code == 200
    page = api.http.get(f"/api/v1/studies/{sid}/trials/{trial['number']}").json()
    assert (page["state"], page["value"]) == ("complete", 0.3)
    summary = api.http.get(f"/api/v1/studies/{sid}").json()
    assert summary["finished"] == 1 and summary["best_trial"]["value"] == 0.3
    second = worker.ask()
    assert second is not None
    assert [r["state"] for r in api.http.get(listing).json()["data"]] == ["complete", "running"]
    assert worker.tell(second, value=0.2, epochs=1).status_code == 200
    assert api.http.get(f"/api/v1/studies/{sid}").json()["status"] == "completed"


def test_a_deleted_studys_pages_are_not_shown_for_the_next_study(api: Any) -> None:
    """SQLite gives a deleted study's id to the next one: its pages are that study's own."""
    first = create(api, "deleted-pages", n_trials=1)
    worker = FakeWorker(api.url, "lanes-deleted")
    trial = worker.ask()
    assert trial is not None and worker.report(trial, 1, value=0.9).status_code == 200
    assert len(api.http.get(f"/api/v1/studies/{first['id']}/trials/0").json()["epochs"]) == 1
    assert api.http.get(f"/api/v1/studies/{first['id']}").json()["name"] == "deleted-pages"
    assert api.http.delete(f"/api/v1/studies/{first['id']}").status_code == 204
    assert api.http.get(f"/api/v1/studies/{first['id']}/trials/0").status_code == 404
    assert api.http.get(f"/api/v1/studies/{first['id']}/trials").status_code == 404
    second = create(api, "after-deleted-pages", n_trials=1)
    trial = worker.ask()
    assert trial is not None and trial["study_id"] == second["id"]
    page = api.http.get(f"/api/v1/studies/{second['id']}/trials/0").json()
    assert page["epochs"] == [] and page["state"] == "running"
    assert api.http.get(f"/api/v1/studies/{second['id']}").json()["name"] == "after-deleted-pages"
    assert worker.tell(trial).status_code == 200


CROWD = """
import json, os, sys, threading, time
import httpx
os.sched_setaffinity(0, {int(sys.argv[2])})
url, seconds, paths = sys.argv[1], float(sys.argv[3]), sys.argv[4:]
clients = [httpx.Client(base_url=url, timeout=60) for _ in range(20)]
statuses = []
def reader(i):
    while time.monotonic() < until:
        statuses.append(clients[i].get(paths[i % len(paths)]).status_code)
print("go", flush=True)
until = time.monotonic() + seconds
threads = [threading.Thread(target=reader, args=(i,)) for i in range(20)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(statuses), flush=True)
"""


def test_a_crowd_of_readers_leaves_the_training_beside_the_api_its_cpu(make_api: Any) -> None:
    """The API and a CPU-bound process (training, as ``hpsearch serve``'s workers do beside
    it) share one core while 20 readers on another core read trial pages without pause: the
    readers get their pages (slower), the busy process keeps most of the core."""
    cpus = sorted(os.sched_getaffinity(0))
    # Every machine of this project has two cores (a failure, not a skip, where one has fewer).
    assert len(cpus) >= 2, (
        f"needs two cores (one for the API and the busy one, one for the crowd): {cpus}"
    )
    # Its reaper seldom: the API's CPU is then the crowd's.
    api = make_api("sqlite", HPSEARCH_REAPER_SECONDS="30", HPSEARCH_LEASE_SECONDS="120")
    study = create(api, "crowded-pages", n_trials=1)
    worker = FakeWorker(api.url, "lanes-crowd")
    trial = worker.ask()
    assert trial is not None and worker.report(trial, 1).status_code == 200
    assert api.process is not None
    for tid in _tasks(api.process.pid):  # the threads it starts later inherit this
        os.sched_setaffinity(tid, {cpus[0]})
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}),  # noqa: PLW1509
    )
    try:
        time.sleep(0.5)
        paths = [f"/api/v1/studies/{study['id']}/trials/0", f"/api/v1/studies/{study['id']}/trials"]
        crowd = subprocess.Popen(
            [sys.executable, "-c", CROWD, api.url, str(cpus[1]), "3", *paths],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert crowd.stdout is not None
        assert crowd.stdout.readline() == "go\n"
        before = _cpu_seconds(api.process.pid), _cpu_seconds(busy.pid)
        answered = crowd.stdout.readline()
        after = _cpu_seconds(api.process.pid), _cpu_seconds(busy.pid)
        assert crowd.wait(60) == 0
    finally:
        busy.kill()
        busy.wait()
    statuses = json.loads(answered)
    api_cpu, busy_cpu = after[0] - before[0], after[1] - before[1]
    assert statuses and set(statuses) == {200}
    # Without the lanes' priorities the two split the core evenly (about 0.5).
    share = busy_cpu / (busy_cpu + api_cpu)
    assert share >= 0.7, f"busy {busy_cpu:.2f} s, API {api_cpu:.2f} s ({len(statuses)} pages)"
