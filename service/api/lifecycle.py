"""Graceful shutdown of an API process: on SIGTERM (or Ctrl-C) it *drains* before it exits.

While draining, the API takes no new work (``POST /api/v1/studies``, ``.../resume`` and dataset
uploads answer 503 with ``Retry-After``; ``POST /api/v1/workers/ask`` answers 204, no trial) and
goes on answering everything else, the worker protocol above all: reports, heartbeats, results
and hand-backs (``release``) of the trials its workers are training. It exits once its local
workers have exited and no trial it served is still running under a live lease (every one was
finished or handed back), or after ``HPSEARCH_DRAIN_SECONDS`` (8 s), whichever comes first.

The timeline of ``hpsearch serve`` (defaults): SIGTERM at 0 s is forwarded once to each local
worker, which stops asking and gives its trial ``HPSEARCH_WORKER_STOP_GRACE`` (5 s) to finish,
then hands it back; a worker still running 1 s before the deadline gets SIGUSR1 (hand back at
once, exit), and one still running at the deadline is killed. The API then closes its
connections (at most 1 s for a request in flight) and exits 0, within 9 s of the signal: under
compose's 10 s and Kubernetes' 30 s before they send SIGKILL. (Typically 5-7 s with a trial in
flight, under a second without.) A second SIGTERM or Ctrl-C, however soon after the first,
hurries it: the workers get SIGUSR1 and hand back at once, and the API exits within 2 s.

``hpsearch serve`` (what the API container runs, with ``--workers 0``) drains; an app started by
plain ``uvicorn`` closes as uvicorn does (at once), which loses no result either: its workers
retry until an API answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import refusal
from service.context import ServiceContext
from service.db.session import database_unavailable
from service.trials import workers

log = logging.getLogger(__name__)

# New work refused while draining: a study (created or resumed), an upload, a trial.
_NEW_WORK = re.compile(r"^/api/v1/(studies|studies/\d+/resume|datasets)$")
_ASK = "/api/v1/workers/ask"
# The protocol calls that name a trial a worker holds through this process.
_TRIAL_CALL = re.compile(r"^/api/v1/trials/(\d+)/(report|heartbeat|tell|release)$")
# How long the API may take to close once drained (requests in flight), and to exit once hurried.
CLOSE_SECONDS = 1.0
HURRY_SECONDS = 2.0
# A worker still running this long before the deadline gets SIGUSR1 (hand back now).
_SECOND_SIGNAL_BEFORE = 1.0


class Drain:
    """This API process's shutdown state, and the trials its workers hold through it."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._lock = threading.Lock()
        self._trials: dict[int, float] = {}  # trial id -> when a worker last named it here

    @property
    def draining(self) -> bool:
        """Whether the drain has begun (no new studies or trials)."""
        return self._started is not None

    def begin(self) -> bool:
        """Start draining; ``False`` when it had started already."""
        with self._lock:
            if self._started is not None:
                return False
            self._started = time.monotonic()
            return True

    def saw_trial(self, trial_id: int) -> None:
        """A worker named this trial here (it was handed out, or reported on)."""
        now = time.monotonic()
        with self._lock:
            self._trials[trial_id] = now
            if len(self._trials) > 10_000:  # a long-lived process: forget the oldest half
                for old in sorted(self._trials, key=self._trials.__getitem__)[:5_000]:
                    del self._trials[old]

    def recent_trials(self, within: float) -> list[int]:
        """The trials named here within the last ``within`` seconds."""
        since = time.monotonic() - within
        with self._lock:
            return [t for t, seen in self._trials.items() if seen >= since]


class DrainGate:
    """ASGI middleware: refuses new work while ``drain`` is on, and notes the trials that the
    worker protocol names (to know when this process's workers are done)."""

    def __init__(self, app: ASGIApp, drain: Drain, ask_again: float, come_back: float) -> None:
        """``ask_again``: the Retry-After of an ask (seconds); ``come_back``: of new work."""
        self.app, self.drain = app, drain
        self.ask_again = f"{max(ask_again, 1):.0f}"
        self.come_back = f"{max(come_back, 1):.0f}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if (call := _TRIAL_CALL.match(path)) is not None:
            await self.app(scope, receive, self._noting_trial(send, int(call.group(1))))
            return
        if path == _ASK:
            if self.drain.draining:
                await self._no_work(scope, receive, send)
                return
            await self.app(scope, receive, self._noting_assignment(send))
            return
        elif self.drain.draining and _NEW_WORK.match(path):
            answer = refusal(
                503,
                "this API process is shutting down (SIGTERM) and takes no new studies or "
                "uploads; retry on another API process, or once it has restarted",
                headers={"Retry-After": self.come_back},
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _no_work(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(b"retry-after", self.ask_again.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _noting_trial(self, send: Send, trial_id: int) -> Send:
        """``send``, noting ``trial_id`` once the call that names it is answered 2xx: a
        request that authentication or the lease check refuses notes nothing."""

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.drain.saw_trial(trial_id)
            await send(message)

        return noting

    def _noting_assignment(self, send: Send) -> Send:
        """``send``, noting the trial id of the assignment an ask answers with."""
        status = 0
        body: list[bytes] = []

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        self.drain.saw_trial(int(json.loads(b"".join(body))["trial_id"]))
            await send(message)

        return noting


class LocalWorkers(Protocol):
    """What the drain needs of the process's own workers (``service.supervisor.Supervisor``)."""

    def stop(self, now: bool = False) -> None:
        """Ask each to stop (SIGTERM); ``now``: to hand its trial back at once (SIGUSR1)."""

    def running(self) -> int:
        """How many are still running."""

    def kill(self) -> None:
        """SIGKILL those still running, and their trial processes."""


class Shutdown:
    """Turns the first SIGTERM/SIGINT into a drain, run in a thread of its own; when it is done
    it tells the server to exit. A second signal hurries it."""

    def __init__(
        self,
        ctx: ServiceContext,
        drain: Drain,
        local: LocalWorkers,
        exit_server: Callable[[], None],
    ) -> None:
        self.ctx, self.drain, self.local, self._exit_server = ctx, drain, local, exit_server
        # Signals (number, when), from the handler to the drain thread: ``SimpleQueue.put`` is
        # safe in a signal handler, where a lock or a thread start could deadlock with the code
        # the signal interrupted; so the thread is started now and waits for the first.
        self._signals: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._wait_and_run, daemon=True, name="drain")
        self.thread.start()

    def signal(self, signum: int) -> None:
        """The signal handler's whole work: queue the signal (no lock, no thread start, no
        I/O: it runs between two bytecodes of the event loop's thread)."""
        self._signals.put((signum, time.monotonic()))

    def _wait_and_run(self) -> None:
        self.run(*self._signals.get())

    def _hurried(self) -> bool:
        """Whether a second signal came."""
        try:
            self._signals.get_nowait()
        except queue.Empty:
            return False
        return True

    def run(self, signum: int, started: float | None = None) -> None:
        """Drain: stop the local workers, answer until every trial is finished or handed back
        (or the deadline, counted from ``started``, the signal), then let the server close."""
        started = time.monotonic() if started is None else started
        settings = self.ctx.settings
        deadline = started + settings.drain_seconds
        self.drain.begin()
        log.info(
            "shutting down: no new studies or trials; answering the workers until they are done",
            extra={
                "signal": signal.Signals(signum).name,
                "drain_seconds": settings.drain_seconds,
                "worker_stop_grace": settings.worker_stop_grace,
            },
        )
        self.local.stop()
        second_signal, hurried, in_hand = False, False, 0
        next_check = 0.0
        while True:
            now = time.monotonic()
            if not hurried and self._hurried():
                hurried = True
                log.info("second stop signal: workers hand back their trials now")
                deadline = min(deadline, now + HURRY_SECONDS)
            if not second_signal and (hurried or now >= deadline - _SECOND_SIGNAL_BEFORE):
                second_signal = True
                if self.local.running():
                    self.local.stop(now=True)
            if now >= deadline:
                break
            if self.local.running() == 0 and now >= next_check:
                if hurried:  # remote workers are not waited for any longer
                    in_hand = 0
                    break
                in_hand = self._trials_in_hand()
                if in_hand == 0:
                    break
                next_check = now + 0.25
            time.sleep(0.05)
        left = self.local.running()
        if left:
            log.warning("workers still running at the drain's deadline: killed", extra={"n": left})
            self.local.kill()
        log.info(
            "drained",
            extra={
                "seconds": round(time.monotonic() - started, 2),
                "trials_still_running_elsewhere": in_hand,
                "workers_killed": left,
            },
        )
        self._exit_server()

    def _trials_in_hand(self) -> int:
        """How many trials served here are still running under a live lease; 0 when the
        database cannot tell (nothing could be recorded anyway)."""
        try:
            return len(
                workers.trials_in_hand(
                    self.ctx, self.drain.recent_trials(self.ctx.settings.lease_seconds)
                )
            )
        except Exception as exc:
            problem = database_unavailable(exc)
            if problem is None:
                log.exception("drain: could not read the trials in hand")
            else:
                log.warning("drain: the database is unavailable", extra={"problem": problem})
            return 0


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM and SIGINT go to ``on_signal`` (a drain) instead
    of closing the listener at once, and no signal is raised again at exit: a drained process
    exits 0."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Our handlers while the server runs (signals reach the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self._on_signal(signum)
