"""The supervisor of `hpsearch serve`'s local workers, with stand-in worker processes (a few lines
of Python, no training): restarts under new ids after a doubling wait, one SIGTERM per stop,
SIGUSR1 (hand back now) only when asked, SIGKILL for what is left, and the dead workers' trials
handed back."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from service.config import Settings
from service.supervisor import Supervisor
from tests.support import wait_for

# A stand-in worker: notes its start and every SIGTERM and SIGUSR1 it gets; dies at once (exit 3)
# unless it is the third restart, which ignores both and waits.
STAND_IN = """
import os, signal, sys, time
worker_id, notes = sys.argv[1], sys.argv[2]
def note(what):
    with open(notes, "a") as f:
        ids = f"{os.getpid()} {os.getpgid(0)} {os.getsid(0)}"
        f.write(f"{worker_id} {what} {time.monotonic()} {ids}\\n")
note("start")
if not worker_id.endswith(".3"):
    time.sleep(0.1)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: note("term"))
signal.signal(signal.SIGUSR1, lambda *_: note("now"))
while True:
    time.sleep(0.05)
"""


def test_a_dead_worker_is_restarted_with_backoff_and_stopped_once(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    deaths: list[tuple[str, int, bool]] = []
    settings = Settings(
        data_dir=tmp_path, worker_restart_seconds=0.2, worker_restart_max_seconds=0.8
    )
    supervisor = Supervisor(
        ["box-1-abcdef-local-1"],
        lambda worker_id: ["-c", STAND_IN, worker_id, str(notes)],
        lambda: dict(os.environ),
        settings,
        on_death=lambda *death: deaths.append(death),
    )
    supervisor.start()
    try:
        wait_for(lambda: notes.exists() and "local-1.3 start" in notes.read_text(), 30, "3")
        starts = [line.split() for line in notes.read_text().splitlines()]
        assert [s[0] for s in starts] == [
            "box-1-abcdef-local-1",
            *(f"box-1-abcdef-local-1.{n}" for n in (1, 2, 3)),
        ]
        times = [float(s[2]) for s in starts]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Each ran 0.1 s, then waited 0.2, 0.4, 0.8 s (doubling to the maximum).
        for gap, wait in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert wait + 0.1 <= gap < wait + 1.5, gaps
        # Each in a process group of its own (a signal to serve's group misses it), in serve's
        # session (autogroup would otherwise give it a CPU share of its own).
        assert all(s[3] == s[4] != str(os.getpgid(0)) for s in starts), starts
        assert all(s[5] == str(os.getsid(0)) for s in starts), starts
        wait_for(lambda: len(deaths) == 3, 10, "the deaths to be handed back")
        assert sorted(deaths) == [
            ("box-1-abcdef-local-1", 3, False),
            ("box-1-abcdef-local-1.1", 3, False),
            ("box-1-abcdef-local-1.2", 3, False),
        ]
        assert supervisor.worker_ids() == ["box-1-abcdef-local-1.3"]

        supervisor.stop()
        supervisor.stop()  # a stop delivered twice is still one SIGTERM
        wait_for(lambda: " term " in notes.read_text(), 10, "the SIGTERM")
        time.sleep(0.3)
        assert notes.read_text().count(" term ") == 1 and supervisor.running() == 1
        supervisor.stop(now=True)  # at once: SIGUSR1, which a worker never takes for a repeat
        wait_for(lambda: " now " in notes.read_text(), 10, "the SIGUSR1")
        supervisor.stop(now=True)
        time.sleep(0.3)
        assert notes.read_text().count(" term ") == 1
        assert notes.read_text().count(" now ") == 1
        supervisor.kill()
        wait_for(lambda: supervisor.running() == 0, 10, "the kill")
        wait_for(lambda: len(deaths) == 4, 10, "the killed worker's trial handed back")
        assert deaths[-1] == ("box-1-abcdef-local-1.3", -9, True)
        assert "local-1.4" not in notes.read_text()  # no restart once stopping
    finally:
        supervisor.shutdown(grace=1)
