"""``hpsearch worker``: ask the service for trials, train them, report every epoch, tell results.

Needs nothing but the API's URL (and a token when auth is on). Survives API restarts: every call
is retried with backoff until ``connect_deadline_seconds`` without an answer, after which the
worker exits non-zero with a clear message. SIGTERM (or Ctrl-C) finishes the current trial and
tells its result, then exits; a second one exits at once (the trial's lease then expires and the
service re-runs it elsewhere).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from hpsearch.datasets import DatasetSpec
from hpsearch.errors import InvalidSpecError
from hpsearch.protocol import (
    AskRequest,
    Assignment,
    EpochReport,
    Heartbeat,
    HeartbeatAnswer,
    ReportAnswer,
    TellRequest,
)
from hpsearch.results import TrialResult, TrialState
from trainer.datacache import DatasetCache, DatasetFetchError, default_cache_dir
from trainer.executor import TrialExecutor

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {502, 503, 504}
# A dataset download: a slow start is an API under load; a stall mid-way is a cut connection.
_DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, read=120.0)


class ApiUnreachableError(RuntimeError):
    """The API did not answer within the connect deadline."""


class StopRequestedError(RuntimeError):
    """Raised instead of waiting any longer for the API once the worker is asked to stop."""


class LeaseLostError(RuntimeError):
    """The service no longer leases this trial to us (404 or 409): drop it."""


class TokenRefusedError(LeaseLostError):
    """401 or 403: the API refuses this worker's token (missing, revoked, or a user token). A
    trial in hand is dropped (its lease runs out and another worker re-runs it); the worker
    exits."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        super().__init__(
            f"the API refused this worker's token (HTTP {response.status_code}: {detail}); "
            "give the worker a worker token with --token or HPSEARCH_TOKEN "
            "(made by `hpsearch token create --kind worker NAME` where the API runs)"
        )


def default_worker_id() -> str:
    """``host-pid-xxxxxx``: the random part tells a restarted container (same host name, pid 1)
    from the process it replaces, so the trial the old one held is re-run as a lost trial."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class ApiClient:
    """The worker protocol over HTTP/JSON, with retries through API restarts."""

    def __init__(
        self,
        api_url: str,
        token: str | None,
        connect_deadline_seconds: float,
        stopping: threading.Event | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=30.0)
        self.deadline = connect_deadline_seconds
        self.stopping = stopping or threading.Event()
        self.api_url = api_url

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any], abort_on_stop: bool = False) -> httpx.Response:
        """POST, retrying through connection errors and 502-504 until the deadline; with
        ``abort_on_stop``, give up as soon as the worker is asked to stop."""
        retry = _Retry(self)
        while True:
            try:
                response = self._http.post(path, json=body)
                if response.status_code in (401, 403):
                    raise TokenRefusedError(response)
                if response.status_code not in _RETRYABLE_STATUS:
                    retry.answered()
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            retry.wait(problem, abort_on_stop)

    def stream(self, path: str) -> Iterator[bytes]:
        """GET ``path``'s body in 1 MiB chunks, retrying (like ``_post``) until it starts; a
        transfer cut short raises ``ConnectionError``, a 404 ``DatasetFetchError``."""
        retry = _Retry(self)
        while True:
            try:
                with self._http.stream("GET", path, timeout=_DOWNLOAD_TIMEOUT) as response:
                    if response.status_code in (401, 403):
                        response.read()
                        raise TokenRefusedError(response)
                    if response.status_code not in _RETRYABLE_STATUS:
                        retry.answered()
                        if response.status_code == 404:
                            response.read()
                            raise DatasetFetchError(
                                "the service no longer has it: "
                                + str(response.json().get("detail", response.text))
                            )
                        response.raise_for_status()
                        try:
                            yield from response.iter_bytes(1 << 20)
                        except httpx.TransportError as exc:
                            raise ConnectionError(f"transfer cut short: {exc}") from exc
                        return
                    problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            retry.wait(problem, abort_on_stop=False)

    @staticmethod
    def _checked(response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (404, 409):
            raise LeaseLostError(response.json().get("detail", response.text))
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def ask(self, request: AskRequest) -> tuple[Assignment | None, float]:
        """A trial, or ``None`` and how long to wait before asking again."""
        response = self._post("/api/v1/workers/ask", request.model_dump(), abort_on_stop=True)
        if response.status_code == 204:
            return None, float(response.headers.get("Retry-After", "1"))
        response.raise_for_status()
        return Assignment.model_validate(response.json()), 0.0

    def report(self, trial_id: int, body: EpochReport) -> ReportAnswer:
        response = self._post(f"/api/v1/trials/{trial_id}/report", body.model_dump())
        return ReportAnswer.model_validate(self._checked(response))

    def heartbeat(self, trial_id: int, body: Heartbeat) -> HeartbeatAnswer:
        response = self._post(f"/api/v1/trials/{trial_id}/heartbeat", body.model_dump())
        return HeartbeatAnswer.model_validate(self._checked(response))

    def tell(self, trial_id: int, body: TellRequest) -> dict[str, Any]:
        response = self._post(f"/api/v1/trials/{trial_id}/tell", body.model_dump(mode="json"))
        return self._checked(response)


class _Retry:
    """The wait between two tries of one request: backoff to 2 s, a warning now and then, and
    ``ApiUnreachableError`` once the client's deadline has passed without an answer."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client
        self._started, self._delay, self._warned = time.monotonic(), 0.2, False

    def answered(self) -> None:
        if self._warned:
            log.info("the API answers again", extra={"api": self._client.api_url})

    def wait(self, problem: str, abort_on_stop: bool) -> None:
        """Sleep before the next try; with ``abort_on_stop``, raise ``StopRequestedError`` as
        soon as the worker is asked to stop."""
        waited = time.monotonic() - self._started
        if waited > self._client.deadline:
            raise ApiUnreachableError(
                f"no answer from the API at {self._client.api_url} for {waited:.0f} s "
                f"(last: {problem}); giving up"
            )
        if not self._warned or (waited > 10 and int(waited) % 10 == 0):
            log.warning(
                "waiting for the API",
                extra={
                    "api": self._client.api_url,
                    "problem": problem,
                    "waited_s": round(waited, 1),
                },
            )
            self._warned = True
        if abort_on_stop:
            if self._client.stopping.wait(self._delay):
                raise StopRequestedError(problem)
        else:  # a report or a result: worth waiting for, stop requested or not
            time.sleep(self._delay)
        self._delay = min(self._delay * 2, 2.0)


class _TrialSession:
    """One assigned trial on the worker's side: reports epochs, heartbeats, notes a lost lease."""

    def __init__(self, client: ApiClient, worker_id: str, assignment: Assignment) -> None:
        self._client, self._worker_id, self.assignment = client, worker_id, assignment
        self.stop_requested = threading.Event()
        self.lease_lost: str | None = None
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
        while not self._done.wait(a.heartbeat_seconds):
            try:
                answer = self._client.heartbeat(
                    a.trial_id, Heartbeat(worker_id=self._worker_id, attempt=a.attempt)
                )
                if answer.should_stop:
                    self.stop_requested.set()
            except LeaseLostError as exc:
                self.lease_lost = str(exc)
                return
            except Exception:  # the API may be restarting: the next beat tries again
                log.warning("heartbeat failed", exc_info=True, extra=self._log_fields())

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
        log.info(
            "epoch reported",
            extra={
                **self._log_fields(),
                "epoch": epoch,
                "metrics": dict(metrics),
                "stop": answer.should_stop,
            },
        )
        return answer.should_stop or self.stop_requested.is_set()

    def _log_fields(self) -> dict[str, Any]:
        a = self.assignment
        return {"study": a.study_name, "trial": a.number, "attempt": a.attempt}


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
    ) -> None:
        self.worker_id = worker_id or default_worker_id()
        self._stopping = threading.Event()
        self._client = ApiClient(api_url, token, connect_deadline_seconds, self._stopping)
        self._executor = executor or TrialExecutor()
        self.datasets = DatasetCache(dataset_cache or default_cache_dir(), self._client.stream)
        self._max_trials = max_trials
        self.trials_done = 0

    def request_stop(self, *_: Any) -> None:
        """Finish the current trial, then exit; a second request exits at once."""
        if self._stopping.is_set():
            log.warning("second stop request: exiting now", extra={"worker": self.worker_id})
            os._exit(143)
        log.info("stop requested: finishing the current trial", extra={"worker": self.worker_id})
        self._stopping.set()

    def run(self) -> int:
        """Ask, train, report, tell, until stopped; returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("worker started", extra={"worker": self.worker_id, "api": self._client.api_url})
        try:
            self._executor.start()
            while not self._stopping.is_set():
                if self._max_trials is not None and self.trials_done >= self._max_trials:
                    break
                assignment, wait = self._client.ask(
                    AskRequest(worker_id=self.worker_id, hostname=socket.gethostname())
                )
                if assignment is None:
                    self._stopping.wait(wait)
                    continue
                self._train(assignment)
        except StopRequestedError:
            pass  # asked to stop while the API was unreachable: nothing is in hand
        except ApiUnreachableError as exc:
            log.error(str(exc), extra={"worker": self.worker_id})
            return 3
        except TokenRefusedError as exc:
            log.error(str(exc), extra={"worker": self.worker_id})
            return 4
        finally:
            self._executor.close()
            self._client.close()
        log.info("worker stopped", extra={"worker": self.worker_id, "trials": self.trials_done})
        return 0

    def _train(self, a: Assignment) -> None:
        fields = {
            "study": a.study_name,
            "trial": a.number,
            "attempt": a.attempt,
            "worker": self.worker_id,
        }
        log.info("training trial", extra={**fields, "params": a.params})
        with _TrialSession(self._client, self.worker_id, a) as session:
            try:
                dataset = self._dataset(a, fields)
                result = self._executor.run(a.params, dataset, a.settings, session)
            except InvalidSpecError as exc:
                result = self._failed(a, f"rejected by the trainer: {exc}")
            except DatasetFetchError as exc:
                result = self._failed(a, f"dataset: {exc}")
        if session.lease_lost:
            log.warning("trial dropped: lease lost", extra={**fields, "detail": session.lease_lost})
            return
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
        self.trials_done += 1

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
