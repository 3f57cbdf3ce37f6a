"""`hpsearch serve` for real: its local workers are supervised (one that dies is restarted, under
a new id, and its trial handed back), `GET /api/v1/workers` shows them, and several serve
processes share one database with auth on, each trial trained once, no one's token revoked."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from service.auth.tokens import LOCAL_WORKERS_TOKEN
from tests.support import (
    free_port,
    hpsearch_cli,
    make_database,
    query,
    service_env,
    spec,
    wait_for,
    wait_ready,
    wait_until_done,
)

FINISHED = ("complete", "pruned", "diverged", "timed_out", "failed")


@dataclass
class Serve:
    """A real `hpsearch serve` process, in a session of its own (so that a signal to its process
    group reaches it and nothing of the test's)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    database_url: str
    token: str | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def wait_ready(self, timeout: float = 90) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        wait_ready(self.url, self.process, self.output, timeout, "hpsearch serve", headers)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def live_workers(self) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/workers", params={"live": "true"})
        assert response.status_code == 200, response.text
        workers: list[dict[str, Any]] = response.json()["data"]
        return workers

    def worker_processes(self) -> list[psutil.Process]:
        """Serve's local workers (its direct children running `hpsearch worker`)."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if "worker" in child.cmdline():
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self, signum: int = signal.SIGTERM, group: bool = False, timeout: float = 30) -> int:
        """Send ``signum`` (to the process group with ``group``); its exit code."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL serve, its workers and their trial processes, whatever is left."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for p in psutil.process_iter(["cmdline"]):
            if any(self.url in part for part in p.info["cmdline"] or []):
                with contextlib.suppress(psutil.NoSuchProcess):
                    for q in (*p.children(recursive=True), p):
                        with contextlib.suppress(psutil.NoSuchProcess):
                            q.kill()


def start_serve(
    env: dict[str, str], log: Path, workers: int = 1, token: str | None = None, port: int = 0
) -> Serve:
    """`hpsearch serve --workers N` on ``env``'s database, answering on a free port."""
    port = port or free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "hpsearch", "serve"),
                *("--port", str(port), "--workers", str(workers)),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    serve = Serve(process, f"http://127.0.0.1:{port}", log, env["HPSEARCH_DATABASE_URL"], token)
    serve.wait_ready()
    return serve


def trainings(*logs: str) -> Counter[tuple[str, int]]:
    """How often each (study, trial number) was trained, from the workers' log lines."""
    found: Counter[tuple[str, int]] = Counter()
    for text in logs:
        for m in re.finditer(r"training trial study=(\S+) trial=(\d+) attempt=\d+", text):
            found[m.group(1), int(m.group(2))] += 1
    return found


def test_a_local_worker_that_dies_is_restarted_and_the_study_completes(tmp_path: Path) -> None:
    """Finding 1: a worker killed (by a trial's settings, the OOM killer, kill -9) used to leave
    the study `running` for ever. Serve starts another, under a new id, within about a second,
    and hands back the trial the dead one held at once."""
    env = service_env(f"sqlite:///{tmp_path / 'hpsearch.db'}", HPSEARCH_DATA_DIR=str(tmp_path))
    serve = start_serve(env, tmp_path / "serve.log", workers=1)
    try:
        (first,) = wait_for(serve.live_workers, 90, "the local worker to ask")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+-\d+-[0-9a-f]{6}-local-1", first["id"]), first
        created = serve.http.post("/api/v1/studies", json=spec("supervised", n_trials=3))
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]

        def holding() -> dict[str, Any] | None:
            for w in serve.live_workers():
                if w["id"] == first["id"] and w["trial"] is not None:
                    return w
            return None

        held = wait_for(holding, 60, "the worker to hold a trial")["trial"]
        (worker,) = serve.worker_processes()
        worker.kill()  # the worker alone, as an OverflowError in it would end it
        died = time.monotonic()

        def replacement() -> dict[str, Any] | None:
            live = [w for w in serve.live_workers() if w["id"] != first["id"]]
            return live[0] if live else None

        new = wait_for(replacement, 60, "a new local worker to ask")
        took = time.monotonic() - died
        assert new["id"] == first["id"] + ".1", new
        done = wait_until_done(serve, study_id, timeout=180)
        assert done["status"] == "completed", done
        trials = serve.http.get(f"/api/v1/studies/{study_id}/trials").json()["data"]
        assert sorted(t["number"] for t in trials) == [0, 1, 2]
        assert all(t["state"] in FINISHED for t in trials), trials
        rerun = next(t for t in trials if t["number"] == held["number"])
        assert rerun["attempt"] == 2 and rerun["worker_id"] == new["id"], rerun
        assert f"its worker {first['id']} died (killed by SIGKILL)" in rerun["reason"], rerun
        log = serve.output()
        assert re.search(
            rf"local worker died: restarting it worker={re.escape(first['id'])} exit_code=-9 "
            r"exit=killed by SIGKILL .*restart_in_s=1\.0 restarts=1",
            log,
        ), log[-3000:]
        print(f"\ndeath to the replacement's first ask: {took:.1f} s")
        assert serve.stop() == 0
    finally:
        serve.kill()


def test_two_serve_processes_share_a_database_with_auth_on(tmp_path: Path) -> None:
    """Finding 3, as the README adds API processes (PostgreSQL, `hpsearch migrate`, a user
    token, serve processes on one database): both serve, every trial is trained exactly once
    (the two local workers used to share the id `local-1`, and each ask of one returned the
    other's running trial), and neither revokes the other's worker token (the second used to
    revoke the first's, whose worker then exited 401)."""
    url, drop = make_database("postgresql", tmp_path)
    env = service_env(url, HPSEARCH_DATA_DIR=str(tmp_path / "data"), HPSEARCH_AUTH="on")
    serves: list[Serve] = []
    try:
        hpsearch_cli(env, "migrate")
        user = hpsearch_cli(env, "token", "create", "alice").strip()
        for n in (1, 2):
            serves.append(start_serve(env, tmp_path / f"serve-{n}.log", workers=1, token=user))
        one, two = serves
        # Both workers ask before the study starts, so that both train. (Read from the logs and
        # the table, not the API: this must also run where the two shared one id.)
        wait_for(lambda: all("worker started" in s.output() for s in serves), 90, "2 workers")
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(query(one, "SELECT id FROM hps_workers")) >= 2, 20, "2 asks")
        assert httpx.get(f"{one.url}/api/v1/studies").status_code == 401  # clients need theirs
        created = one.http.post("/api/v1/studies", json=spec("two-serves", n_trials=6))
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        done = wait_until_done(two, study_id, timeout=240)
        assert done["status"] == "completed" and done["finished"] == 6, done

        logs = [s.output() for s in serves]
        for log in logs:
            assert "refused this worker's token" not in log, log[-3000:]
            assert "local worker died" not in log
        assert trainings(*logs) == Counter({("two-serves", n): 1 for n in range(6)})
        trials = two.http.get(f"/api/v1/studies/{study_id}/trials").json()["data"]
        assert sorted(t["number"] for t in trials) == list(range(6))
        assert all(t["attempt"] == 1 for t in trials), trials
        ids = {w["id"] for w in one.live_workers()}
        assert len(ids) == 2 and all(i.endswith("-local-1") for i in ids), ids
        assert {t["worker_id"] for t in trials} == ids  # both trained
        tokens = json.loads(hpsearch_cli(env, "token", "list", "--json"))
        local = [t for t in tokens if t["name"].startswith(LOCAL_WORKERS_TOKEN)]
        assert len(local) == 2 and {t["status"] for t in local} == {"active"}, local
        assert {t["kind"] for t in local} == {"worker"}
        # Each named after its serve process, whose workers are <serve>-local-N.
        assert {t["name"] for t in local} == {
            f"{LOCAL_WORKERS_TOKEN} ({i.removesuffix('-local-1')})" for i in ids
        }

        assert [s.stop() for s in serves] == [0, 0]
        # A clean stop revokes each serve's own worker token.
        rows = query(one, "SELECT name, revoked_at FROM hps_tokens")
        assert all(
            r["revoked_at"] is not None for r in rows if r["name"].startswith(LOCAL_WORKERS_TOKEN)
        )
        assert all("auth on" in log for log in logs)
    finally:
        for s in serves:
            s.kill()
        drop()
