"""``hpsearch serve``'s local workers, supervised: started, restarted when they die, stopped once.

- Each worker runs in a session (and process group) of its own, so that a signal sent to
  serve's process group (Ctrl-C in a terminal, ``kill -- -PGID``) reaches serve alone, which
  forwards it once. Each also gets SIGTERM when serve dies, even by ``kill -9``
  (``PR_SET_PDEATHSIG``, Linux).
- A worker that exits while serve is not stopping (a non-zero status, or killed by a signal) is
  started again, under a new id (``<id>.<restarts>``: the trial the dead one held is another
  attempt, never the same one twice), after a wait that doubles from
  ``HPSEARCH_WORKER_RESTART_SECONDS`` (1 s) to ``HPSEARCH_WORKER_RESTART_MAX_SECONDS`` (60 s)
  and starts over once a worker has run that long. Each exit and restart is logged with the
  worker id, the exit code or signal, and the wait. A worker that exits 0 was stopped on
  purpose (someone sent it SIGTERM) and is not restarted.
- Every worker is started, and waited for, by one thread that lives until the last one is
  gone: the kernel sends the parent-death signal when the *thread* that forked a child ends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.config import Settings

log = logging.getLogger(__name__)

# Run before the worker's own interpreter: ask for SIGTERM when serve dies, then exec the worker.
# (Done in a fresh process rather than in ``preexec_fn``, which is unsafe once serve has threads.)
_LAUNCHER = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
# A background group of serve's session: a write to a terminal set to `stty tostop` must not
# stop the worker (ignored signals stay ignored across exec).
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
if os.getppid() != int(sys.argv[1]):  # serve died before the prctl took effect
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
_POLL_SECONDS = 0.1


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Slot:
    """One of the N places a local worker fills; its worker changes when one is restarted."""

    base_id: str
    process: subprocess.Popen[bytes] | None = None
    worker_id: str = ""
    started_at: float = 0.0
    restarts: int = 0
    delay: float = 0.0
    start_at: float = 0.0  # when to start the next worker (monotonic)
    signalled: int = 0  # stop signals sent to the current worker: 1 SIGTERM, 2 and SIGUSR1
    retired: bool = False  # exited 0 on its own: not restarted


class Supervisor:
    """N local workers. ``command(worker_id)`` is the worker's argv (after the interpreter),
    ``env()`` its environment, read at every start (a fresh token after a revoked one);
    ``on_death(worker_id, returncode, stopping)`` runs after a worker died unexpectedly
    (``stopping`` False), or was killed while serve stopped (True), to hand back its trial."""

    def __init__(
        self,
        worker_ids: list[str],
        command: Callable[[str], list[str]],
        env: Callable[[], dict[str, str]],
        settings: Settings,
        on_death: Callable[[str, int, bool], None] | None = None,
    ) -> None:
        self._slots = [_Slot(base_id) for base_id in worker_ids]
        self._command, self._env, self._on_death = command, env, on_death
        self._first_delay = settings.worker_restart_seconds
        self._max_delay = settings.worker_restart_max_seconds
        self._stopping = threading.Event()
        self._killing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self.restarts = 0

    # -- what serve calls ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (in the supervisor's own thread) and watch them."""
        if self._slots:
            self._thread.start()

    def stop(self, now: bool = False) -> None:
        """No more restarts; SIGTERM to each running worker, once. ``now``: SIGUSR1 as well,
        once, which makes a worker hand its trial back at once (a second SIGTERM would not,
        within 1 s of the first: the worker takes it for the first delivered twice)."""
        self._stopping.set()
        with self._lock:
            for slot in self._slots:
                if not self._alive(slot):
                    continue
                assert slot.process is not None
                if slot.signalled == 0:
                    slot.signalled = 1
                    self._signal(slot.process, signal.SIGTERM)
                if now and slot.signalled == 1:
                    slot.signalled = 2
                    self._signal(slot.process, signal.SIGUSR1)

    def running(self) -> int:
        """How many workers are running."""
        with self._lock:
            return sum(1 for s in self._slots if self._alive(s))

    def kill(self) -> None:
        """SIGKILL every running worker and its trial processes (its process group)."""
        self._stopping.set()
        self._killing.set()
        with self._lock:
            for slot in self._slots:
                if self._alive(slot):
                    assert slot.process is not None
                    self._signal(slot.process, signal.SIGKILL)

    def shutdown(self, grace: float) -> None:
        """Stop, wait up to ``grace`` seconds, kill what is left; return once all are gone."""
        self.stop()
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        if self.running():
            self.kill()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def worker_ids(self) -> list[str]:
        """The ids of the workers running now."""
        with self._lock:
            return [s.worker_id for s in self._slots if self._alive(s)]

    # -- the supervisor's thread ---------------------------------------------------------------

    def _watch(self) -> None:
        for slot in self._slots:
            self._start(slot)
        while True:
            now = time.monotonic()
            alive = 0
            for slot in self._slots:
                if slot.process is not None:
                    code = slot.process.poll()
                    if code is None:
                        alive += 1
                        continue
                    self._exited(slot, code, now)
                if (
                    slot.process is None
                    and not slot.retired
                    and not self._stopping.is_set()
                    and now >= slot.start_at
                ):
                    self._start(slot)
                    alive += 1
            if self._stopping.is_set() and alive == 0:
                return
            time.sleep(_POLL_SECONDS)

    def _start(self, slot: _Slot) -> None:
        worker_id = slot.base_id if slot.restarts == 0 else f"{slot.base_id}.{slot.restarts}"
        try:
            env = self._env()
        except Exception:
            log.exception("could not prepare a local worker: trying again later")
            slot.start_at = time.monotonic() + self._next_delay(slot, ran=0.0)
            return
        argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *self._command(worker_id)]
        with self._lock:
            if self._stopping.is_set():
                return
            # A process group of its own, so that a signal to serve's group reaches serve
            # alone; serve's session, not a new one: with autogroup scheduling each session
            # gets an equal share of the CPU, which would undo the user lane's lower priority
            # (a crowd of dashboard readers then halves training; benchmark 8, `crowd --serve`).
            slot.process = subprocess.Popen(argv, env=env, process_group=0)
            slot.worker_id, slot.started_at, slot.signalled = worker_id, time.monotonic(), 0
        log.info(
            "local worker started",
            extra={"worker": worker_id, "pid": slot.process.pid, "restarts": slot.restarts},
        )

    def _exited(self, slot: _Slot, code: int, now: float) -> None:
        ran = now - slot.started_at
        worker_id = slot.worker_id
        with self._lock:
            slot.process = None
        fields = {
            "worker": worker_id,
            "exit_code": code,
            "exit": describe_exit(code),
            "ran_s": round(ran, 1),
        }
        if self._stopping.is_set():
            level = logging.INFO if code == 0 or self._killing.is_set() else logging.WARNING
            log.log(level, "local worker stopped", extra=fields)
            if code != 0:  # killed before it could hand its trial back: done for it, now
                self._hand_back(worker_id, code, stopping=True)
            return
        if code == 0:
            slot.retired = True
            log.warning("local worker exited on its own (exit code 0): not restarted", extra=fields)
            return
        delay = self._next_delay(slot, ran)
        slot.restarts += 1
        self.restarts += 1
        slot.start_at = now + delay
        log.warning(
            "local worker died: restarting it",
            extra={**fields, "restart_in_s": round(delay, 2), "restarts": slot.restarts},
        )
        # In a thread of its own: a database that is slow to answer never delays a restart.
        threading.Thread(
            target=self._hand_back, args=(worker_id, code, False), daemon=True, name="hand-back"
        ).start()

    def _hand_back(self, worker_id: str, code: int, stopping: bool) -> None:
        if self._on_death is None:
            return
        try:
            self._on_death(worker_id, code, stopping)
        except Exception:  # its trial then waits out its lease, as for a lost machine
            log.exception("could not hand back a dead worker's trial", extra={"worker": worker_id})

    def _next_delay(self, slot: _Slot, ran: float) -> float:
        """1 s, 2 s, 4 s ... up to the maximum; from 1 s again after a worker ran that long."""
        if ran >= self._max_delay or slot.delay == 0:
            slot.delay = self._first_delay
        else:
            slot.delay = min(slot.delay * 2, self._max_delay)
        return slot.delay

    @staticmethod
    def _alive(slot: _Slot) -> bool:
        return slot.process is not None and slot.process.poll() is None

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        """``signum`` to the worker; SIGKILL to its whole process group (its trial processes)."""
        try:
            if signum == signal.SIGKILL:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        except ProcessLookupError:
            pass  # it exited meanwhile
