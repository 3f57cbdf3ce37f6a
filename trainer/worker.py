"""``hpsearch worker``: ask the service for trials, train them, report every epoch, tell results.

Needs nothing but the API's URL (and a token when auth is on). Survives API restarts: every call
is retried with backoff until ``connect_deadline_seconds`` without an answer, after which the
worker exits 3 with a clear message (4 when the API refuses its token).

A worker never dies of a trial: whatever goes wrong in one (its parameters, its data, an error
in training or in the worker itself) ends that trial ``failed`` with the reason, and the worker
asks for the next. When the trial's process dies (killed, out of memory, a crash in native
code) the worker hands the trial back instead (``release``, cause ``crashed``): the service
re-runs it up to the spec's ``max_retries`` times, then fails it with the reason.

Stopping, as ``hpsearch serve``, compose and Kubernetes rely on it:

- The first SIGTERM or SIGINT: the worker asks for no more trials. The trial in progress has
  ``stop_grace`` seconds (``--stop-grace``, env ``HPSEARCH_WORKER_STOP_GRACE``, default 5) to
  finish and tell its result. If it does not, the worker kills its trial process and releases
  the trial (cause ``stopping``, no retry used): the next worker that asks re-runs it, as the
  next attempt with the same parameters, without waiting for its lease to expire. A trial
  assigned while the stop was requested is released at once, untrained.
- A second signal, 1 s or more after the first, ends the grace at once (kill, release). One sent
  both to the worker and to its process group arrives twice within a moment: that counts once.
  SIGUSR1 ends the grace at once whenever it comes (what ``hpsearch serve`` sends when hurried,
  however soon after its first SIGTERM).
- A release waits at most 2.5 s (``RELEASE_SECONDS``) for the API: if it is gone the worker
  gives up and the trial's lease expires as it would have. Every other call gives up as soon as
  the grace is over, so that the worker is gone within ``stop_grace`` + about 2.5 s of the first
  signal.
- Exit status 0 after a requested stop (or ``--max-trials``), with no traceback from the worker
  or its trial processes; 3 when the API was unreachable for the connect deadline, 4 when it
  refused the token, 1 when its answers name no trial this worker can read (another protocol).
- Trial processes ignore SIGTERM and SIGINT (their worker decides) and exit within half a
  second of their worker's death, even by ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from hpsearch.client import (
    ApiUnreachableError,
    Client,
    LeaseLostError,
    StopRequestedError,
    TokenRefusedError,
    UnrunnableAssignmentError,
    describe_refusal,
)
from hpsearch.datasets import DatasetSpec
from hpsearch.errors import InvalidSpecError
from hpsearch.protocol import (
    DEFAULT_STOP_GRACE_SECONDS,
    MAX_REASON_CHARS,
    AskRequest,
    Assignment,
    EpochReport,
    Heartbeat,
    ReleaseRequest,
    TellRequest,
)
from hpsearch.results import TrialResult, TrialState
from trainer.datacache import DatasetCache, DatasetFetchError, default_cache_dir
from trainer.executor import TrialAbortedError, TrialExecutor, TrialProcessDiedError

log = logging.getLogger(__name__)

# Two stop signals closer than this are one stop, delivered twice (to the worker and its group).
_SAME_STOP_SECONDS = 1.0
# The longest single wait on anything the API says (Retry-After, heartbeat interval).
_LONGEST_WAIT_SECONDS = 60.0


def default_worker_id() -> str:
    """``host-pid-xxxxxx``: the random part tells a restarted container (same host name, pid 1)
    from the process it replaces, so the trial the old one held is re-run as a lost trial."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _TrialSession:
    """One assigned trial on the worker's side: reports epochs, heartbeats, notes a lost lease."""

    def __init__(self, client: Client, worker_id: str, assignment: Assignment) -> None:
        self._client, self._worker_id, self.assignment = client, worker_id, assignment
        self.stop_requested = threading.Event()
        self.lease_lost: str | None = None
        self.epochs_reported = 0
        self._done = threading.Event()
        self._beats = threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat")

    def __enter__(self) -> _TrialSession:
        self._beats.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._beats.join(timeout=5)

    def _heartbeat(self) -> None:
        a = self.assignment
        interval = min(max(a.heartbeat_seconds, 0.1), _LONGEST_WAIT_SECONDS)
        while not self._done.wait(interval):
            try:
                answer = self._client.heartbeat(
                    a.trial_id,
                    Heartbeat(worker_id=self._worker_id, attempt=a.attempt),
                    give_up=lambda: self._done.is_set() or self._client.hurry.is_set(),
                )
                if answer.should_stop:
                    self.stop_requested.set()
            except LeaseLostError as exc:
                self.lease_lost = str(exc)
                return
            except StopRequestedError:
                return
            except Exception as exc:  # the API may be restarting: the next beat tries again
                log.warning(
                    "heartbeat failed",
                    extra={**self.log_fields(), "problem": f"{type(exc).__name__}: {exc}"},
                )

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """The ``Reporter`` the executor calls after every epoch."""
        if self.lease_lost:
            return True
        a = self.assignment
        try:
            answer = self._client.report(
                a.trial_id,
                EpochReport(
                    worker_id=self._worker_id, attempt=a.attempt, epoch=epoch, metrics=dict(metrics)
                ),
            )
        except LeaseLostError as exc:
            self.lease_lost = str(exc)
            return True
        self.epochs_reported = epoch
        log.info(
            "epoch reported",
            extra={
                **self.log_fields(),
                "epoch": epoch,
                "metrics": dict(metrics),
                "stop": answer.should_stop,
            },
        )
        return answer.should_stop or self.stop_requested.is_set()

    def log_fields(self) -> dict[str, Any]:
        a = self.assignment
        return {"study": a.study_name, "trial": a.number, "attempt": a.attempt}


@dataclass(frozen=True)
class _HandBack:
    """A trial the worker will not finish, to release with this cause and reason."""

    cause: Literal["stopping", "crashed"]
    reason: str


class Worker:
    """The worker loop; ``run()`` returns the process exit code."""

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        worker_id: str | None = None,
        executor: TrialExecutor | None = None,
        connect_deadline_seconds: float = 300.0,
        max_trials: int | None = None,
        dataset_cache: Path | None = None,
        stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
    ) -> None:
        self.worker_id = worker_id or default_worker_id()
        self._stopping, self._hurry = threading.Event(), threading.Event()
        self._client = Client(
            api_url,
            token,
            connect_deadline=connect_deadline_seconds,
            stopping=self._stopping,
            hurry=self._hurry,
        )
        self._executor = executor or TrialExecutor()
        self.datasets = DatasetCache(dataset_cache or default_cache_dir(), self._client.stream)
        self._max_trials = max_trials
        self._stop_grace = stop_grace_seconds
        self._first_stop: tuple[float, str] | None = None  # when, and which signal
        # Stop requests (signal, when), from the signal handler to the stop-grace thread.
        self._requests: queue.SimpleQueue[tuple[int | None, float]] = queue.SimpleQueue()
        self._idle = threading.Event()  # set while no trial is in hand
        self._idle.set()
        self.trials_done = 0

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        """Ask for no more trials; the current one has the stop grace to finish. A second
        request (1 s or more after the first: two closer are one stop, delivered to the worker
        and to its group), or SIGUSR1 at any time, hands the current trial back at once.

        The signal handler: it only queues the request (``SimpleQueue.put`` is safe in a signal
        handler; a lock, a thread start or I/O could deadlock with the code it interrupts). The
        stop-grace thread, started before the handlers, does the rest."""
        self._requests.put((signum, time.monotonic()))

    def _grace(self) -> None:
        """The stop-grace thread: takes the first stop request, then waits for the trial in
        hand to finish within the grace; hands it back when the grace runs out or a later
        request says now."""
        signum, asked_at = self._requests.get()
        what = signal.Signals(signum).name if signum else "a stop request"
        self._first_stop = (asked_at, what)
        self._stopping.set()
        log.info(
            "stop requested: no more trials; the current one may finish",
            extra={"worker": self.worker_id, "signal": what, "grace_s": self._stop_grace},
        )
        if signum == signal.SIGUSR1:
            self._hand_back_now(what)
            return
        deadline = asked_at + self._stop_grace
        while not self._idle.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                self._hand_back_now(f"its {self._stop_grace:g} s stop grace ran out")
                return
            try:
                later, at = self._requests.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            name = signal.Signals(later).name if later else "a stop request"
            if later == signal.SIGUSR1:
                self._hand_back_now(name)
                return
            if at - asked_at >= _SAME_STOP_SECONDS:
                self._hand_back_now(f"a second {name}")
                return

    def _hand_back_now(self, why: str) -> None:
        if self._hurry.is_set():
            return
        log.info(
            "stopping now: the trial in progress is handed back",
            extra={"worker": self.worker_id, "why": why},
        )
        self._hurry.set()
        self._executor.abort(why)

    def run(self) -> int:
        """Ask, train, report, tell, until stopped; returns the exit code."""
        threading.Thread(target=self._grace, daemon=True, name="stop-grace").start()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self.request_stop)
        log.info("worker started", extra={"worker": self.worker_id, "api": self._client.api_url})
        try:
            self._executor.start()
            while not self._stopping.is_set():
                if self._max_trials is not None and self.trials_done >= self._max_trials:
                    break
                self._idle.clear()
                try:
                    self._ask_and_train()
                finally:
                    self._idle.set()
        except StopRequestedError:
            pass  # asked to stop while the API was unreachable: nothing is in hand
        except ApiUnreachableError as exc:
            log.error(str(exc), extra={"worker": self.worker_id})
            return 3
        except TokenRefusedError as exc:
            log.error(str(exc), extra={"worker": self.worker_id})
            return 4
        except UnrunnableAssignmentError as exc:
            log.error(str(exc), extra={"worker": self.worker_id})
            return 1
        finally:
            self._executor.close()
            self._client.close()
        log.info("worker stopped", extra={"worker": self.worker_id, "trials": self.trials_done})
        return 0

    def _ask_and_train(self) -> None:
        try:
            assignment, wait = self._client.ask(
                AskRequest(worker_id=self.worker_id, hostname=socket.gethostname())
            )
        except UnrunnableAssignmentError as exc:
            self._refuse(exc)
            return
        if assignment is None:
            self._stopping.wait(wait)
        elif self._stopping.is_set():  # the stop came while the ask was in flight
            self._release(
                assignment,
                _HandBack("stopping", f"worker {self.worker_id} stopped before training it"),
                self._log_fields(assignment),
            )
        else:
            self._train(assignment)

    def _refuse(self, exc: UnrunnableAssignmentError) -> None:
        """Fail a trial this worker cannot run; an answer that names no trial ends the worker
        (exit 1: this API and this worker do not speak the same protocol)."""
        fields = {"worker": self.worker_id, "trial_id": exc.trial_id, "reason": str(exc)}
        if not isinstance(exc.trial_id, int) or not isinstance(exc.attempt, int):
            raise exc
        log.error("trial refused", extra=fields)
        result = TrialResult(state=TrialState.FAILED, reason=str(exc))
        try:
            self._client.tell(
                exc.trial_id,
                TellRequest(worker_id=self.worker_id, attempt=exc.attempt, result=result),
            )
        except LeaseLostError as lost:
            log.warning("result not taken", extra={**fields, "detail": str(lost)})

    def _log_fields(self, a: Assignment) -> dict[str, Any]:
        return {
            "study": a.study_name,
            "trial": a.number,
            "attempt": a.attempt,
            "worker": self.worker_id,
        }

    def _train(self, a: Assignment) -> None:
        fields = self._log_fields(a)
        log.info("training trial", extra={**fields, "params": a.params})
        with _TrialSession(self._client, self.worker_id, a) as session:
            outcome = self._outcome(a, session, fields)
        if session.lease_lost:
            log.warning("trial dropped: lease lost", extra={**fields, "detail": session.lease_lost})
            return
        if isinstance(outcome, _HandBack):
            self._release(a, outcome, fields)
            return
        self._tell(a, outcome, fields)
        self.trials_done += 1

    def _tell(self, a: Assignment, result: TrialResult, fields: dict[str, Any]) -> None:
        """Tell the result; one the API refuses (4xx) is told again as this trial's failure."""
        try:
            told = self._client.tell(
                a.trial_id, TellRequest(worker_id=self.worker_id, attempt=a.attempt, result=result)
            )
            log.info(
                "trial told",
                extra={**fields, "state": told.get("state"), "value": told.get("value")},
            )
        except LeaseLostError as exc:
            log.warning("result not taken", extra={**fields, "detail": str(exc)})
        except httpx.HTTPStatusError as exc:
            refused = f"failed: the service refused its result: {describe_refusal(exc.response)}"
            log.error("result refused", extra={**fields, "reason": refused})
            if result.state is not TrialState.FAILED or result.reason != refused:
                self._tell(a, self._failed(a, refused), fields)

    def _outcome(
        self, a: Assignment, session: _TrialSession, fields: dict[str, Any]
    ) -> TrialResult | _HandBack:
        """Train the trial: its result, or why to hand it back. Only the worker's own ends (the
        API unreachable, the token refused) escape."""
        try:
            dataset = self._dataset(a, fields)
            return self._executor.run(a.params, dataset, a.settings, session)
        except InvalidSpecError as exc:
            return self._failed(a, f"rejected by the trainer: {exc}")
        except DatasetFetchError as exc:
            return self._failed(a, f"dataset: {exc}")
        except TrialProcessDiedError as exc:
            if self._hurry.is_set():  # killed by this stop, or as it began: not the trial's doing
                return self._stopped(session)
            log.warning("trial process died", extra={**fields, "reason": exc.reason})
            return _HandBack("crashed", exc.reason)
        except (TrialAbortedError, StopRequestedError):
            return self._stopped(session)
        except (ApiUnreachableError, TokenRefusedError):
            raise
        except Exception as exc:  # a bug of ours; still, only this trial pays for it
            log.error("trial failed in the worker", exc_info=True, extra=fields)
            return self._failed(a, f"failed in the worker: {type(exc).__name__}: {exc}")

    def _stopped(self, session: _TrialSession) -> _HandBack:
        what = self._first_stop[1] if self._first_stop else "a stop request"
        return _HandBack(
            "stopping",
            f"worker {self.worker_id} was stopped ({what}) "
            f"during epoch {session.epochs_reported + 1}",
        )

    def _release(self, a: Assignment, back: _HandBack, fields: dict[str, Any]) -> None:
        hurried = back.cause == "stopping"
        body = ReleaseRequest(
            worker_id=self.worker_id,
            attempt=a.attempt,
            cause=back.cause,
            reason=back.reason[:MAX_REASON_CHARS],
        )
        try:
            answer = self._client.release(a.trial_id, body, hurried)
        except LeaseLostError as exc:
            log.warning("release not taken", extra={**fields, "detail": str(exc)})
            return
        except httpx.HTTPStatusError as exc:  # its lease expires: it is re-run as a lost trial
            log.error("release refused", extra={**fields, "detail": describe_refusal(exc.response)})
            return
        except (ApiUnreachableError, StopRequestedError) as exc:
            if not hurried:
                raise
            log.warning(
                "could not hand the trial back: its lease will expire",
                extra={**fields, "problem": str(exc)},
            )
            return
        log.info(
            "trial released",
            extra={
                **fields,
                "cause": back.cause,
                "reason": back.reason,
                "state": answer.state,
                "retries_left": answer.retries_left,
            },
        )

    def _dataset(self, a: Assignment, log_fields: dict[str, Any]) -> DatasetSpec:
        """The assignment's dataset; an uploaded one fetched (once) into the local cache."""
        values = dict(a.dataset)
        ident = values.pop("id", None)
        if ident is None:
            return DatasetSpec.model_validate(values)
        if a.dataset_file is None:
            raise DatasetFetchError(f"{ident} no longer exists on the service")
        path = self.datasets.path(a.dataset_file, log_fields)
        label = a.dataset_file.label_column
        return DatasetSpec.model_validate(
            {**values, "path": str(path), **({"label_column": label} if label else {})}
        )

    @staticmethod
    def _failed(a: Assignment, reason: str) -> TrialResult:
        return TrialResult(
            state=TrialState.FAILED,
            reason=reason,
            objective=a.settings.objective,
            direction=a.settings.direction,
        )
