"""A real ``hpsearch worker`` and its real trial process, against a real API (SQLite: what is
tested here is the worker's side): a trial process killed mid-epoch is re-run, not failed; a
stopped worker hands its trial back within its grace and exits 0 without a traceback, and
another worker re-runs the trial at once; a trial process outlives no worker."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.service.conftest import workers  # noqa: F401  (a fixture of the e2e tier)
from tests.service.test_protocol import create
from tests.support import (
    Api,
    query,
    start_api,
    wait_for,
)

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial

# About 0.3 s an epoch with one thread here: long enough to stop a trial mid-way.
SLOW = {
    "dataset": {"name": "synthetic", "n_samples": 2000, "n_features": 10, "n_classes": 3},
    "training": {"batch_size": 8, "optimizer": "sgd"},
    "search_space": {"learning_rate": {"type": "float", "low": 0.001, "high": 0.01}},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server, drop = start_api("sqlite", tmp_path_factory.mktemp("worker-stop"))
    yield server
    server.stop()
    drop()


def trial_row(api: Api, study_id: int) -> dict[str, Any]:
    [row] = query(
        api,
        "SELECT id, number, state, attempt, worker_id, epochs_run, reason, started_at "
        f"FROM hps_trials WHERE study_id = {study_id}",
    )
    return row


def trial_process(worker: Any) -> psutil.Process:
    """The worker's trial process (its only one: no spare is due in a worker's first trials)."""
    [child] = [
        c
        for c in psutil.Process(worker.process.pid).children()
        if c.status() != psutil.STATUS_ZOMBIE and "trainer.child" in c.cmdline()
    ]
    return child


def exited(process: psutil.Process) -> bool:
    """Whether it has exited (a zombie has: its new parent may be slow to reap it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def at(value: Any) -> datetime:
    """A timestamp column as read back (SQLite gives text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def epochs_reached(api: Api, study_id: int, epochs: int, attempt: int = 1) -> Any:
    def reached() -> Any:
        rows = query(api, f"SELECT attempt, epochs_run FROM hps_trials WHERE study_id = {study_id}")
        return rows and rows[0]["attempt"] == attempt and rows[0]["epochs_run"] >= epochs

    return wait_for(reached, 90, f"epoch {epochs} of attempt {attempt}", interval=0.05)


def test_a_trial_process_killed_mid_epoch_is_rerun_then_failed_when_no_retry_is_left(
    api: Api,
    workers: Any,  # noqa: F811
) -> None:
    """Issue 16, finding 8: a trial whose process was killed was failed, never retried."""
    [w] = workers(api.url, 1, prefix="crash")
    retried = create(api, "killed-retried", n_trials=1, max_retries=1, epochs=4, **SLOW)
    epochs_reached(api, retried["id"], 1)
    trial_process(w).kill()
    done = wait_for(
        lambda: (row := trial_row(api, retried["id"]))["state"] != "running" and row,
        120,
        "the re-run to finish",
    )
    assert done["state"] == "complete" and done["attempt"] == 2, done
    assert done["worker_id"] == "crash1" and w.process.poll() is None  # the worker lives on
    assert re.fullmatch(
        r"attempt 1: the trial process died \(killed: SIGKILL\) during epoch [2-4]; re-run",
        done["reason"],
    ), done["reason"]

    failed = create(api, "killed-failed", n_trials=1, max_retries=0, epochs=4, **SLOW)
    epochs_reached(api, failed["id"], 1)
    trial_process(w).kill()
    done = wait_for(
        lambda: (row := trial_row(api, failed["id"]))["state"] != "running" and row,
        60,
        "the trial to fail",
    )
    assert done["state"] == "failed" and done["attempt"] == 1, done
    assert re.fullmatch(
        r"failed: attempt 1: the trial process died \(killed: SIGKILL\) during epoch [2-4]; "
        r"no retries left \(max_retries 0\)",
        done["reason"],
    ), done["reason"]
    assert w.process.poll() is None
    assert "Traceback" not in w.log.read_text()


def test_sigterm_hands_the_trial_back_after_the_grace_and_another_worker_runs_it_at_once(
    api: Api,
    workers: Any,  # noqa: F811
) -> None:
    """Issue 16, finding 2 (the worker's side): a stopped worker kept its trial until the end."""
    s = create(api, "stopped-mid-trial", n_trials=1, epochs=200, **SLOW)
    [leaving] = workers(api.url, 1, prefix="leaving", stop_grace="1")
    epochs_reached(api, s["id"], 1)
    [staying] = workers(api.url, 1, prefix="staying")
    wait_for(
        lambda: query(api, "SELECT id FROM hps_workers WHERE id = 'staying2'"),
        60,
        "the second worker to ask",
    )
    signalled = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(30) == 0
    exited = time.monotonic() - signalled
    rerun = wait_for(
        lambda: (row := trial_row(api, s["id"]))["attempt"] == 2 and row, 10, "the re-run"
    )
    [released] = query(
        api, f"SELECT released_at FROM hps_trial_releases WHERE trial_id = {rerun['id']}"
    )
    handed_over = (at(rerun["started_at"]) - at(released["released_at"])).total_seconds()
    print(f"\nSIGTERM -> exit {exited:.2f} s (grace 1 s); release -> re-run {handed_over:.2f} s")
    assert exited < 1 + 3, exited  # the grace, then the kill and the release
    assert rerun["worker_id"] == "staying2"
    assert handed_over < 1.5, handed_over  # one ask interval (0.3 s here), not a lease (4 s)
    assert re.fullmatch(
        r"attempt 1: worker leaving1 was stopped \(SIGTERM\) during epoch \d+; re-run",
        rerun["reason"],
    ), rerun["reason"]
    log = leaving.log.read_text()
    assert "trial released" in log and "Traceback" not in log, log[-3000:]
    api.http.delete(f"/api/v1/studies/{s['id']}")
    staying.process.send_signal(signal.SIGTERM)
    assert staying.process.wait(30) == 0
    assert "Traceback" not in staying.log.read_text()


def test_a_doubled_signal_counts_once_and_a_later_one_hands_the_trial_back_at_once(
    api: Api,
    workers: Any,  # noqa: F811
) -> None:
    s = create(api, "stopped-twice", n_trials=1, epochs=200, **SLOW)
    [w] = workers(api.url, 1, prefix="twice", stop_grace="60")
    epochs_reached(api, s["id"], 1)
    child = trial_process(w)
    # As a SIGTERM to the process group and one forwarded by a supervisor arrive: together.
    w.process.send_signal(signal.SIGTERM)
    w.process.send_signal(signal.SIGTERM)
    doubled, before = time.monotonic(), trial_row(api, s["id"])["epochs_run"]
    epochs_reached(api, s["id"], before + 2)  # still in its grace: the trial trains on
    time.sleep(max(1.2 - (time.monotonic() - doubled), 0))
    assert w.process.poll() is None
    signalled = time.monotonic()
    w.process.send_signal(signal.SIGINT)
    assert w.process.wait(10) == 0
    took = time.monotonic() - signalled
    print(f"\nsecond signal -> exit: {took:.2f} s")
    assert took < 4
    assert exited(child)
    row = trial_row(api, s["id"])
    assert row["state"] == "running" and row["worker_id"] is None and row["attempt"] == 1
    assert row["reason"].startswith("attempt 1: worker twice1 was stopped (SIGTERM) during epoch")
    assert "Traceback" not in w.log.read_text()
    api.http.delete(f"/api/v1/studies/{s['id']}")


def test_sigusr1_hands_the_trial_back_at_once_even_right_after_a_sigterm(
    api: Api,
    workers: Any,  # noqa: F811
) -> None:
    """What serve sends when hurried, however soon after its SIGTERM: a second SIGTERM within
    1 s counts as the first delivered twice, so serve's "now" was lost (review of issue 16)."""
    s = create(api, "stopped-now", n_trials=1, epochs=200, **SLOW)
    [w] = workers(api.url, 1, prefix="usr", stop_grace="60")
    epochs_reached(api, s["id"], 1)
    child = trial_process(w)
    signalled = time.monotonic()
    w.process.send_signal(signal.SIGTERM)
    w.process.send_signal(signal.SIGUSR1)
    assert w.process.wait(10) == 0
    took = time.monotonic() - signalled
    print(f"\nSIGTERM + SIGUSR1 -> exit: {took:.2f} s (grace 60 s)")
    assert took < 4
    assert exited(child)
    row = trial_row(api, s["id"])
    assert row["state"] == "running" and row["worker_id"] is None and row["attempt"] == 1
    # Python runs the handlers of signals pending together in signal-number order: SIGUSR1 may
    # come first.
    assert re.match(
        r"attempt 1: worker usr1 was stopped \((SIGTERM|SIGUSR1)\) during epoch", row["reason"]
    )
    assert "Traceback" not in w.log.read_text()
    api.http.delete(f"/api/v1/studies/{s['id']}")


def test_a_trial_process_exits_quietly_when_its_worker_is_killed(
    api: Api,
    workers: Any,  # noqa: F811
) -> None:
    """The issue saw EOFError/BrokenPipe tracebacks from trial processes left behind."""
    s = create(api, "orphaned", n_trials=1, epochs=200, **SLOW)
    [w] = workers(api.url, 1, prefix="killed")
    epochs_reached(api, s["id"], 1)
    child = trial_process(w)
    w.process.kill()
    w.process.wait()
    killed = time.monotonic()
    wait_for(lambda: exited(child), 3, "the trial process to exit", interval=0.05)
    print(f"\nworker killed -> trial process exited: {time.monotonic() - killed:.2f} s")
    time.sleep(0.5)  # anything it would still print
    assert "Traceback" not in Path(w.log).read_text()
    api.http.delete(f"/api/v1/studies/{s['id']}")
