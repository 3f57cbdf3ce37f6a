"""Runs trials in a child process that is replaced before TensorFlow's memory growth adds up.

TensorFlow keeps memory across models in one process (about 6 MB per model, even with
``clear_session``), so a long-lived worker that trains in-process grows without bound. The
executor trains in a child, retires it after ``recycle_after`` trials or once its RSS passes
``max_rss_mb``, and starts (and warms) the replacement while the old child still trains its last
trial, so that recycling adds no idle time between trials.
"""

from __future__ import annotations

import contextlib
import logging
import math
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
    """Trains one trial at a time in a recycled child process. Not thread-safe: one caller."""

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

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first child now (it imports TensorFlow), rather than at the first trial."""
        if self._current is None:
            self._current = self._spawn()

    def close(self) -> None:
        """Retire every child."""
        for c in (self._current, self._spare):
            if c is not None:
                self._retire(c, wait=True)
        self._current = self._spare = None

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
                    raise TimeoutError(f"trial process not ready after {self._start_timeout:g} s")
                c.pid = int(child_protocol.receive(parent_end)["pid"])
                self._startup_seconds = time.monotonic() - c.spawned_at
                if warm is not None:
                    child_protocol.send(parent_end, {"type": "warm", "dataset": warm})
            except BaseException as exc:  # reported to the caller that needs this child
                c.failed = exc
            c.ready.set()

        threading.Thread(target=wait_ready, daemon=True, name="hpsearch-child-start").start()
        return c

    def _retire(self, c: _Child, wait: bool = False) -> None:
        def stop() -> None:
            with contextlib.suppress(OSError, ValueError):
                child_protocol.send(c.conn, {"type": "exit"})
            try:
                c.process.wait(10)
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
        if self._current is None:
            self._current = self._spawn()
        c = self._current
        c.ready.wait()
        if c.failed is not None:
            self._current = None
            self._retire(c)
            raise RuntimeError(f"could not start a trial process: {c.failed}") from c.failed
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

        ``InvalidSpecError`` when the parameters or the data are rejected before training. A
        child that dies or hangs ends the trial ``failed`` or ``timed_out``; the next trial gets
        a fresh child.
        """
        reporter = reporter or NeverStop()
        c = self._take_ready_child()
        dataset_json = dataset.model_dump(mode="json", exclude_unset=True)
        self._last_dataset = dataset_json
        if self._spare is None and self._due_soon(c):
            self._spare = self._spawn()  # warms up while the current child trains
        started = time.monotonic()
        deadline = None
        if settings.timeout_seconds is not None:
            deadline = started + settings.timeout_seconds + _KILL_GRACE_SECONDS
        try:
            child_protocol.send(
                c.conn,
                {
                    "type": "trial",
                    "params": params,
                    "dataset": dataset_json,
                    "settings": settings.model_dump(mode="json"),
                },
            )
            result = self._converse(c, reporter, deadline)
        except _ChildLost as lost:
            self._replace_current()
            result = TrialResult(
                state=lost.state,
                reason=lost.reason,
                objective=settings.objective,
                direction=settings.direction,
                epochs=lost.epochs,
                epochs_run=len(lost.epochs),
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
        self.stats.trials += 1
        if isinstance(result, InvalidSpecError):
            raise result
        return result

    def _due_soon(self, c: _Child) -> bool:
        """Whether ``c`` retires within the time a replacement needs to start (with margin)."""
        if c.rss >= 0.8 * self.max_rss:
            return True
        per_trial = self._trial_seconds or self._startup_seconds
        lead = math.ceil(1.5 * self._startup_seconds / max(per_trial, 1e-3))
        return c.trials + lead >= self.recycle_after

    def _replace_current(self) -> None:
        old = self._current
        self._current, self._spare = self._spare or self._spawn(), None
        if old is not None:
            self._retire(old)

    def _converse(
        self, c: _Child, reporter: Reporter, deadline: float | None
    ) -> TrialResult | InvalidSpecError:
        from hpsearch.results import EpochMetrics

        epochs: list[EpochMetrics] = []
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                if not c.conn.poll(wait):
                    c.process.kill()
                    raise _ChildLost(
                        TrialState.TIMED_OUT,
                        "timed out: the trial process hung past its limit and was killed",
                        epochs,
                    )
                message = child_protocol.receive(c.conn)
            except (EOFError, OSError):
                try:
                    code: int | None = c.process.wait(5)
                except subprocess.TimeoutExpired:
                    code = None
                raise _ChildLost(
                    TrialState.FAILED,
                    f"the trial process died (exit code {code}) during epoch {len(epochs) + 1}",
                    epochs,
                ) from None
            kind = message["type"]
            if kind == "epoch":
                metrics = message["metrics"]
                stop = reporter.report(int(message["epoch"]), metrics)
                epochs.append(EpochMetrics(epoch=int(message["epoch"]), seconds=0.0, **metrics))
                child_protocol.send(c.conn, {"type": "answer", "stop": bool(stop)})
            elif kind == "result":
                c.rss = int(message["rss"])
                return TrialResult.model_validate(message["result"])
            elif kind == "invalid":
                c.rss = int(message["rss"])
                return InvalidSpecError(FieldError(**e) for e in message["errors"])
            else:
                raise RuntimeError(f"unexpected message from the trial process: {kind!r}")


class _ChildLost(Exception):
    def __init__(self, state: TrialState, reason: str, epochs: list[Any]) -> None:
        super().__init__(reason)
        self.state, self.reason, self.epochs = state, reason, epochs
