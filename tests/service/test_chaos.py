"""Chaos: a study runs while a seeded schedule sends SIGTERM and SIGKILL to `hpsearch serve` (alone
or its process group), to its local worker and to the worker's trial processes, at random moments;
serve is started again whenever it is gone, as an operator would. Remote workers (protocol clients
in this process) train through it all. On SQLite and PostgreSQL, the end must show:

- the exact budget: `n_trials` finished trials, numbered 0..n-1, none left `running`;
- no finished result lost: every trial seen finished at any moment is finished at the end, in the
  same state with the same value, and Optuna has it too;
- every SIGTERM to serve ended in exit 0 within its drain.

Set HPSEARCH_CHAOS_SEED to replay a schedule; a failure names its seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.service.test_protocol import METRICS
from tests.service.test_serve import Serve, start_serve
from tests.support import (
    BACKENDS,
    free_port,
    make_database,
    query,
    service_env,
    spec,
    wait_for,
)

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial

N_TRIALS = 16
EVENTS = 6
FINISHED = ("complete", "pruned", "diverged", "timed_out", "failed")


class RemoteWorker(threading.Thread):
    """A worker on another machine: speaks the protocol (1.5 s trials of 5 epochs), rides out the
    API's absences, and drops a trial whose lease it lost."""

    def __init__(self, url: str, worker_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=worker_id)
        self.http = httpx.Client(base_url=url, timeout=5)
        self.worker_id, self.stop = worker_id, stop
        self.told = 0

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """The answer, retried while the API is away; ``None`` once stopped."""
        while not self.stop.is_set():
            try:
                response = self.http.post(path, json=body)
                if response.status_code not in (502, 503):
                    return response
            except httpx.TransportError:
                pass
            self.stop.wait(0.3)
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            asked = self._post("/api/v1/workers/ask", {"worker_id": self.worker_id})
            if asked is None:
                return
            if asked.status_code == 204:
                self.stop.wait(0.3)
                continue
            assert asked.status_code == 200, asked.text
            self._train(asked.json())

    def _train(self, trial: dict[str, Any]) -> None:
        who = {"worker_id": self.worker_id, "attempt": trial["attempt"]}
        value = random.Random(trial["trial_id"]).uniform(0.3, 0.9)
        for epoch in range(1, 6):
            self.stop.wait(0.3)
            body = {**who, "epoch": epoch, "metrics": {**METRICS, "val_accuracy": value}}
            reported = self._post(f"/api/v1/trials/{trial['trial_id']}/report", body)
            if reported is None or reported.status_code != 200:
                return  # lease lost (409) or study gone: drop it
            if reported.json()["should_stop"]:
                break
        result = {
            "state": "complete",
            "epochs_run": epoch,
            "best_value": value,
            "final_value": value,
            "seconds": 1.5,
            "epochs": [],
        }
        told = self._post(f"/api/v1/trials/{trial['trial_id']}/tell", {**who, "result": result})
        if told is not None and told.status_code == 200:
            self.told += 1


class Chaos:
    """Serve, restarted whenever it is gone, and the record of what was seen finished."""

    def __init__(self, env: dict[str, str], tmp: Path, port: int, seed: int) -> None:
        self.env, self.tmp, self.port = env, tmp, port
        self.rng = random.Random(seed)
        self.started: list[Serve] = []
        self.serve = self._start()
        self.exits: list[tuple[str, int, float]] = []  # (what was sent, exit code, seconds)
        self.seen: dict[int, tuple[str, float | None]] = {}  # number -> finished (state, value)

    def _start(self) -> Serve:
        log = self.tmp / f"serve-{len(self.started) + 1}.log"
        serve = start_serve(self.env, log, workers=1, port=self.port)
        self.started.append(serve)
        return serve

    def observe(self, study_id: int) -> None:
        """Note every finished trial, from the database (the API may be away)."""
        rows = query(
            self.serve,
            f"SELECT number, state, value FROM hps_trials WHERE study_id = {study_id}",
        )
        for r in rows:
            if r["state"] in FINISHED:
                seen = self.seen.setdefault(r["number"], (r["state"], r["value"]))
                assert seen == (r["state"], r["value"]), (r, seen)

    def strike(self) -> str:
        """One event of the schedule, on whatever runs now; what it was."""
        serve = self.serve
        workers = serve.worker_processes()
        trial_processes = [c for w in workers for c in _children(w) if _is_trial_process(c)]
        choices = ["term serve", "term serve group", "kill serve"]
        if workers:
            choices += ["kill worker", "term worker"]
        if trial_processes:
            choices += ["kill trial process", "kill trial process"]
        event = self.rng.choice(choices)
        if event.startswith("term serve"):
            sent = time.monotonic()
            code = serve.stop(signal.SIGTERM, group=event.endswith("group"), timeout=15)
            self.exits.append((event, code, time.monotonic() - sent))
            self.serve = self._start()
        elif event == "kill serve":
            serve.process.kill()  # its workers get SIGTERM from the kernel, and stop
            serve.process.wait()
            self.serve = self._start()
        else:
            target = self.rng.choice(trial_processes if "trial" in event else workers)
            with contextlib.suppress(psutil.NoSuchProcess):
                target.send_signal(signal.SIGTERM if event.startswith("term") else signal.SIGKILL)
        return event


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children())
    except psutil.NoSuchProcess:
        return []


def _is_trial_process(process: psutil.Process) -> bool:
    try:
        return "trainer.child" in process.cmdline()
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_study_keeps_its_budget_and_its_results_through_chaos(
    backend: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("HPSEARCH_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {seed} (HPSEARCH_CHAOS_SEED={seed} replays it)")
    url, drop = make_database(backend, tmp_path)
    env = service_env(url, HPSEARCH_DATA_DIR=str(tmp_path / "data"))
    chaos = Chaos(env, tmp_path, free_port(), seed)
    stop = threading.Event()
    remote = [RemoteWorker(chaos.serve.url, f"remote-{i}", stop) for i in range(2)]
    events: list[str] = []
    try:
        created = chaos.serve.http.post(
            "/api/v1/studies",
            json=spec("chaos", n_trials=N_TRIALS, training={"epochs": 5}, max_retries=3),
        )
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        for w in remote:
            w.start()
        for _ in range(EVENTS):
            pause = time.monotonic() + chaos.rng.uniform(0.5, 3.0)
            while time.monotonic() < pause:
                chaos.observe(study_id)
                time.sleep(0.2)
            t0 = time.monotonic()
            events.append(chaos.strike())
            events[-1] += f" ({time.monotonic() - t0:.1f} s)"
            chaos.observe(study_id)

        def finished() -> bool:
            chaos.observe(study_id)
            (row,) = query(chaos.serve, f"SELECT status FROM hps_studies WHERE id = {study_id}")
            return row["status"] not in ("queued", "running")

        t0 = time.monotonic()
        wait_for(finished, 90, "the study to end after the chaos")
        print(f"study ended {time.monotonic() - t0:.1f} s after the last event")
        stop.set()
        (study,) = query(chaos.serve, f"SELECT * FROM hps_studies WHERE id = {study_id}")
        trials = query(
            chaos.serve,
            "SELECT number, state, value, attempt, optuna_synced FROM hps_trials "
            f"WHERE study_id = {study_id} ORDER BY number",
        )
        assert study["status"] == "completed", study
        assert [t["number"] for t in trials] == list(range(N_TRIALS)), trials
        assert all(t["state"] in FINISHED for t in trials), trials  # none left running
        final = {t["number"]: (t["state"], t["value"]) for t in trials}
        assert {n: final[n] for n in chaos.seen} == chaos.seen  # no finished result lost
        wait_for(
            lambda: all(
                t["optuna_synced"]
                for t in query(
                    chaos.serve, f"SELECT optuna_synced FROM hps_trials WHERE study_id = {study_id}"
                )
            ),
            30,
            "Optuna to have every result",
        )
        for event, code, took in chaos.exits:
            assert code == 0 and took < 9, (event, code, took)
        code = chaos.serve.stop(signal.SIGTERM, timeout=15)
        assert code == 0
        print(
            f"events: {events}; serve started {len(chaos.started)} times; "
            f"re-run attempts: {sum(t['attempt'] > 1 for t in trials)}"
        )
    except Exception as exc:
        raise AssertionError(f"chaos seed {seed}, events {events}: {exc}") from exc
    finally:
        stop.set()
        for w in remote:
            if w.ident is not None:
                w.join(10)
        for serve in chaos.started:
            serve.kill()
        drop()
