"""Runs trials in a child process that is replaced before TensorFlow's memory growth adds up.

TensorFlow keeps memory across models in one process (about 6 MB per model, even with
``clear_session``), so a long-lived worker that trains in-process grows without bound. The
executor trains in a child, retires it after ``recycle_after`` trials or once its RSS passes
``max_rss_mb``, and starts (and warms) the replacement while the old child still trains its last
trial, so that recycling adds no idle time between trials.

Whatever goes wrong with one trial ends that trial, never the caller: bad parameters or data
raise ``InvalidSpecError`` before training; an error in training, or in talking to the child,
ends the trial ``failed`` with the reason; a child that hangs past the trial's limit is killed
and the trial ends ``timed_out``; a child that dies (killed, out of memory, a crash in native
code) raises ``TrialProcessDiedError``, so that the caller can have the trial re-run. In every
case the next trial gets a working child.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hpsearch.datasets import DatasetSpec
from hpsearch.errors import FieldError, InvalidSpecError
from hpsearch.params import TrainingSettings
from hpsearch.results import TrialResult, TrialState
from trainer import child as child_protocol
from trainer.reporting import NeverStop, Reporter

log = logging.getLogger(__name__)

# How long past its own limit a trial's child may take before it is killed as hung.
_KILL_GRACE_SECONDS = 30.0
# The longest single wait on a child: a trial's limit can be longer than what ``poll`` accepts
# (milliseconds in a C int: about 24.8 days), so long waits are taken in steps of this.
_LONGEST_WAIT_SECONDS = 3600.0
# How long a retired child may take to exit when the executor closes, before it is killed.
_CLOSE_PATIENCE_SECONDS = 2.0


class TrialProcessDiedError(RuntimeError):
    """The trial's process died before the trial ended (killed, out of memory, a crash in native
    code): the trial did not fail, it was cut off, and may be re-run. ``epochs_run``: the epochs
    it finished first."""

    def __init__(self, reason: str, epochs_run: int) -> None:
        super().__init__(reason)
        self.reason, self.epochs_run = reason, epochs_run


class TrialAbortedError(RuntimeError):
    """``TrialExecutor.abort`` stopped the trial (the worker is stopping)."""


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    conn: Connection
    pid: int = 0
    spawned_at: float = field(default_factory=time.monotonic)
    trials: int = 0
    rss: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    failed: BaseException | None = None


@dataclass
class ExecutorStats:
    """What the executor did, for logs and benchmarks."""

    trials: int = 0
    children_started: int = 0
    children_retired: int = 0
    last_child_rss: int = 0


class TrialExecutor:
    """Trains one trial at a time in a recycled child process. One caller runs trials; ``abort``
    may come from any thread (a signal handler's, a timer's)."""

    def __init__(
        self,
        recycle_after: int = 50,
        max_rss_mb: float = 2048.0,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        if recycle_after < 1:
            raise ValueError("recycle_after must be >= 1")
        self.recycle_after = recycle_after
        self.max_rss = int(max_rss_mb * 1024 * 1024)
        self._threads = (intra_op_threads, inter_op_threads)
        self._start_timeout = start_timeout
        self.stats = ExecutorStats()
        self._current: _Child | None = None
        self._spare: _Child | None = None
        self._last_dataset: dict[str, Any] | None = None
        # Measured, to start a replacement early enough to be ready when it is needed.
        self._startup_seconds = 10.0
        self._trial_seconds: float | None = None
        # ``abort``: why, and the child running the trial it must stop.
        self._lock = threading.RLock()  # an RLock: ``abort`` may run in a signal handler
        self._aborted: str | None = None
        self._busy: _Child | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first child now (it imports TensorFlow), rather than at the first trial."""
        if self._current is None and self._aborted is None:
            self._current = self._spawn()

    def close(self) -> None:
        """Retire every child: each is asked to exit, and killed if it has not within 2 s."""
        children = [c for c in (self._current, self._spare) if c is not None]
        self._current = self._spare = None
        for c in children:
            with contextlib.suppress(OSError, ValueError):
                child_protocol.send(c.conn, {"type": "exit"})
        deadline = time.monotonic() + _CLOSE_PATIENCE_SECONDS
        for c in children:
            self._retire(c, wait=True, patience=max(deadline - time.monotonic(), 0.0))

    def abort(self, reason: str) -> None:
        """Stop the trial in progress now (its ``run`` raises ``TrialAbortedError``) and refuse
        later ones: the caller is stopping. Safe from any thread and from a signal handler."""
        with self._lock:
            self._aborted = reason
            busy = self._busy
        if busy is not None:
            with contextlib.suppress(OSError):
                busy.process.kill()

    def __enter__(self) -> TrialExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Child:
        # A fresh interpreter (not fork: TensorFlow's threads do not survive it; not
        # multiprocessing's spawn: it re-imports the caller's __main__).
        ours, theirs = socket.socketpair()
        intra, inter = self._threads
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainer.child",
                str(theirs.fileno()),
                str(intra or 0),
                str(inter or 0),
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        parent_end = Connection(ours.detach())
        c = _Child(process, parent_end)
        self.stats.children_started += 1
        warm = self._last_dataset

        def wait_ready() -> None:
            try:
                if not parent_end.poll(self._start_timeout):
                    raise TimeoutError(f"not ready after {self._start_timeout:g} s")
                c.pid = int(child_protocol.receive(parent_end)["pid"])
                self._startup_seconds = time.monotonic() - c.spawned_at
                if warm is not None:
                    child_protocol.send(parent_end, {"type": "warm", "dataset": warm})
            except EOFError:
                c.failed = RuntimeError(f"it exited ({_exit_status(process)}) while starting")
            except BaseException as exc:  # reported to the caller that needs this child
                c.failed = exc
            c.ready.set()

        threading.Thread(target=wait_ready, daemon=True, name="hpsearch-child-start").start()
        return c

    def _retire(self, c: _Child, wait: bool = False, patience: float = 10.0) -> None:
        def stop() -> None:
            with contextlib.suppress(OSError, ValueError):
                child_protocol.send(c.conn, {"type": "exit"})
            try:
                c.process.wait(patience)
            except subprocess.TimeoutExpired:
                c.process.kill()
                c.process.wait()
            c.conn.close()

        self.stats.children_retired += 1
        if wait:
            stop()
        else:
            threading.Thread(target=stop, daemon=True, name="hpsearch-child-retire").start()

    def _take_ready_child(self) -> _Child:
        with self._lock:
            if self._aborted is not None:
                raise TrialAbortedError(self._aborted)
            if self._current is None:
                self._current = self._spawn()
            c = self._busy = self._current
        c.ready.wait()
        if c.failed is not None:
            self._current, self._spare = self._spare, None
            self._retire(c)
            raise _ChildLost(
                TrialState.FAILED, f"the trial process could not start: {c.failed}", [], died=True
            )
        return c

    # -- trials --------------------------------------------------------------------------------

    def run(
        self,
        params: dict[str, Any],
        dataset: DatasetSpec,
        settings: TrainingSettings,
        reporter: Reporter | None = None,
    ) -> TrialResult:
        """Train one trial in the child and return its result.

        Raises ``InvalidSpecError`` when the parameters or the data are rejected before
        training, ``TrialProcessDiedError`` when the child dies (or cannot start),
        ``TrialAbortedError`` once ``abort`` was called, and whatever ``reporter`` raises. Any
        other error ends the trial ``failed`` with the reason; a child that hangs past the
        trial's limit ends it ``timed_out``. The next trial gets a working child in every case.
        """
        reporter = reporter or NeverStop()
        dataset_json = dataset.model_dump(mode="json", exclude_unset=True)
        self._last_dataset = dataset_json
        started = time.monotonic()
        deadline = None
        if settings.timeout_seconds is not None:
            deadline = started + settings.timeout_seconds + _KILL_GRACE_SECONDS
        trial = {
            "type": "trial",
            "params": params,
            "dataset": dataset_json,
            "settings": settings.model_dump(mode="json"),
        }
        try:
            c = self._hand_over(trial)
            if self._spare is None and self._due_soon(c):
                self._spare = self._spawn()  # warms up while the current child trains
            result = self._converse(c, reporter, deadline)
        except _ReporterFailed as failed:
            self._replace_current()
            raise failed.error from None
        except Exception as exc:
            self._replace_current()
            if self._aborted is not None:
                raise TrialAbortedError(self._aborted) from None
            if not isinstance(exc, _ChildLost):  # ours to fix, not the trial's: say what
                log.warning("trial process conversation failed", exc_info=True)
                exc = _ChildLost(
                    TrialState.FAILED,
                    f"failed: talking to the trial process: {type(exc).__name__}: {exc}",
                    [],
                )
            if exc.died:
                raise TrialProcessDiedError(exc.reason, len(exc.epochs)) from None
            result = TrialResult(
                state=exc.state,
                reason=exc.reason,
                objective=settings.objective,
                direction=settings.direction,
                epochs=exc.epochs,
                epochs_run=len(exc.epochs),
                seconds=time.monotonic() - started,
            )
        else:
            c.trials += 1
            self.stats.last_child_rss = c.rss
            took = time.monotonic() - started
            self._trial_seconds = (
                took if self._trial_seconds is None else (0.8 * self._trial_seconds + 0.2 * took)
            )
            if c.trials >= self.recycle_after or c.rss >= self.max_rss:
                log.info(
                    "recycling trial process",
                    extra={"pid": c.pid, "trials": c.trials, "rss_mb": round(c.rss / 2**20)},
                )
                self._replace_current()
        finally:
            with self._lock:
                self._busy = None
        self.stats.trials += 1
        if isinstance(result, InvalidSpecError):
            raise result
        return result

    def _hand_over(self, trial: dict[str, Any]) -> _Child:
        """Send the trial to a ready child. A child found dead before it got the trial (killed
        while it waited or started) is no fault of this trial: it goes to the next child."""
        problem = ""
        for _ in range(2):
            try:
                c = self._take_ready_child()
            except _ChildLost as lost:  # it could not start (killed, or broken): try another
                problem = lost.reason
                continue
            if c.process.poll() is None:
                try:
                    child_protocol.send(c.conn, trial)
                    return c
                except OSError:
                    pass
            problem = f"the trial process died ({_exit_status(c.process)}) between trials"
            log.warning("trial process found dead: starting another", extra={"pid": c.pid})
            self._replace_current()
        raise _ChildLost(TrialState.FAILED, f"{problem}, twice", [], died=True)

    def _due_soon(self, c: _Child) -> bool:
        """Whether ``c`` retires within the time a replacement needs to start (with margin)."""
        if c.rss >= 0.8 * self.max_rss:
            return True
        per_trial = self._trial_seconds or self._startup_seconds
        lead = math.ceil(1.5 * self._startup_seconds / max(per_trial, 1e-3))
        return c.trials + lead >= self.recycle_after

    def _replace_current(self) -> None:
        """Retire the current child; the spare (or a new child) takes its place, unless the
        executor was aborted: no child is started for a trial that will not come."""
        old = self._current
        if self._aborted is not None:
            self._current = None
        else:
            self._current, self._spare = self._spare or self._spawn(), None
        if old is not None:
            self._retire(old)

    def _converse(
        self, c: _Child, reporter: Reporter, deadline: float | None
    ) -> TrialResult | InvalidSpecError:
        from hpsearch.results import EpochMetrics

        epochs: list[EpochMetrics] = []
        while True:
            try:
                if not _wait_for_message(c.conn, deadline):
                    c.process.kill()
                    raise _ChildLost(
                        TrialState.TIMED_OUT,
                        "timed out: the trial process hung past its limit and was killed",
                        epochs,
                    )
                message = child_protocol.receive(c.conn)
            except (EOFError, OSError):
                raise _ChildLost(
                    TrialState.FAILED,
                    f"the trial process died ({_exit_status(c.process)}) "
                    f"during epoch {len(epochs) + 1}",
                    epochs,
                    died=True,
                ) from None
            kind = message["type"]
            if kind == "epoch":
                metrics = message["metrics"]
                try:
                    stop = reporter.report(int(message["epoch"]), metrics)
                except BaseException as exc:
                    raise _ReporterFailed(exc) from exc
                epochs.append(EpochMetrics(epoch=int(message["epoch"]), seconds=0.0, **metrics))
                try:
                    child_protocol.send(c.conn, {"type": "answer", "stop": bool(stop)})
                except OSError:
                    raise _ChildLost(
                        TrialState.FAILED,
                        f"the trial process died ({_exit_status(c.process)}) "
                        f"after epoch {len(epochs)}",
                        epochs,
                        died=True,
                    ) from None
            elif kind == "result":
                c.rss = int(message["rss"])
                return TrialResult.model_validate(message["result"])
            elif kind == "invalid":
                c.rss = int(message["rss"])
                return InvalidSpecError(FieldError(**e) for e in message["errors"])
            else:
                raise RuntimeError(f"unexpected message from the trial process: {kind!r}")


def _wait_for_message(conn: Connection, deadline: float | None) -> bool:
    """Wait until the child says something (or goes away); ``False`` once ``deadline`` passes.
    Taken in steps that ``poll`` accepts, however far away the deadline is."""
    while True:
        if deadline is None:
            step = _LONGEST_WAIT_SECONDS
        else:
            step = min(deadline - time.monotonic(), _LONGEST_WAIT_SECONDS)
            if step <= 0:
                return conn.poll(0)
        if conn.poll(step):
            return True


def _exit_status(process: subprocess.Popen[bytes]) -> str:
    """How a child ended, in words: ``killed: SIGKILL``, ``exit code 1``."""
    try:
        code = process.wait(5)
    except subprocess.TimeoutExpired:
        return "still running 5 s after its pipe closed"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed: {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class _ChildLost(Exception):
    """The child ended the conversation: hung (killed), died, or could not start."""

    def __init__(
        self, state: TrialState, reason: str, epochs: list[Any], died: bool = False
    ) -> None:
        super().__init__(reason)
        self.state, self.reason, self.epochs = state, reason, epochs
        self.died = died


class _ReporterFailed(Exception):
    """The caller's reporter raised ``error``: it is the caller's to handle, not the trial's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
