"""One client of the hpsearch REST API, used by the worker, the ``study``/``dataset`` commands,
the tests and the benchmarks.

Two ways to call, one error mapping:

- **User calls** (``request``, ``json``, ``fetch_all`` and the typed methods built on them) are
  made once: anything but the answers expected (no connection, a timeout, a refused token, a 4xx
  or 5xx) raises :class:`ApiError`, whose message names the URL and what to do, and whose
  ``exit_code`` is the command's exit status.
- **Protocol calls** (``ask``, ``report``, ``heartbeat``, ``tell``, ``release``, ``stream``) are
  what a worker makes: retried through connection errors and 502-504 with backoff until the
  connect deadline (``ApiUnreachableError``), and given up as soon as the worker is told to
  hurry (``StopRequestedError``). 404 and 409 on a trial mean its lease is lost
  (``LeaseLostError``); 401 and 403, ``TokenRefusedError``.

Needs only httpx and pydantic (``pip install 'hpsearch[client]'``). Not thread-safe: one httpx
client each.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from hpsearch.protocol import (
    RELEASE_SECONDS,
    AskRequest,
    Assignment,
    EpochReport,
    Heartbeat,
    HeartbeatAnswer,
    ReleaseAnswer,
    ReleaseRequest,
    ReportAnswer,
    TellRequest,
)

log = logging.getLogger(__name__)

# Exit codes of the commands, one per kind of failure (3 and 4 are also what ``hpsearch worker``
# exits with when the API is unreachable or refuses its token).
EXIT_OK = 0
EXIT_FAILED = 1  # anything else: a 5xx, an unexpected answer, a study that ended unsuccessfully
EXIT_INVALID = 2  # invalid input: a bad argument or file, a 422 (or 413) from the API
EXIT_UNREACHABLE = 3  # no answer: connection refused, host not found, timeout, broken connection
EXIT_TOKEN_REFUSED = 4  # 401 (no valid token) or 403 (a token of the wrong kind)
EXIT_NOT_FOUND = 5  # 404: no such study or dataset
EXIT_CONFLICT = 6  # 409: the resource's state forbids it (a taken name, a study already ended)
EXIT_INTERRUPTED = 130  # Ctrl-C

PAGE_SIZE = 500  # rows per request when a whole list is fetched
_NO_SERVER_HINT = "start it with `hpsearch serve`, or pass --api / set HPSEARCH_API_URL"
_TOKEN_HINT = "set HPSEARCH_TOKEN to a user token (`hpsearch token create NAME` where the API runs)"
_WORKER_TOKEN_HINT = (
    "give the worker a worker token with --token or HPSEARCH_TOKEN "
    "(made by `hpsearch token create --kind worker NAME` where the API runs)"
)
_RETRYABLE_STATUS = {502, 503, 504}
# A dataset download: a slow start is an API under load; a stall mid-way is a cut connection.
_DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, read=120.0)
# A stop's release waits RELEASE_SECONDS for the API in all; a hurried call, this for one answer.
_HURRIED_TIMEOUT = 2.0
# The longest single wait on anything the API says (Retry-After).
_LONGEST_WAIT_SECONDS = 60.0


class ApiError(Exception):
    """A request the API refused or could not answer: the line to show, the indented lines
    under it (one per field at fault), the command's exit code, and the HTTP status and fields
    at fault when the API answered."""

    def __init__(
        self,
        message: str,
        exit_code: int = EXIT_FAILED,
        details: Sequence[str] = (),
        status: int | None = None,
        fields: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.details = tuple(details)
        self.status = status
        self.fields = tuple(fields)


class ApiUnreachableError(ApiError):
    """A protocol call got no answer within the connect deadline."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


class LeaseLostError(ApiError):
    """The service no longer leases this trial to the worker (404 or 409): drop it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, EXIT_CONFLICT, status=status)


class TokenRefusedError(LeaseLostError):
    """401 or 403 on a protocol call: the API refuses the worker's token (missing, revoked, or
    a user token). A trial in hand is dropped (its lease runs out and another worker re-runs
    it); the worker exits."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"the API refused this worker's token ({describe_refusal(response)}); "
            + _WORKER_TOKEN_HINT,
            response.status_code,
        )
        self.exit_code = EXIT_TOKEN_REFUSED


class ContentGoneError(ApiError):
    """404 on a content download: the service no longer has it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND, status=404)


class StopRequestedError(RuntimeError):
    """Raised instead of waiting any longer for the API once the caller is told to stop."""


class UnrunnableAssignmentError(RuntimeError):
    """An assignment this worker cannot take as it is (from an API of another version, say):
    its trial is told ``failed`` with the reason, and the worker asks for the next."""

    def __init__(self, answer: Any, error: ValidationError) -> None:
        raw = answer if isinstance(answer, dict) else {}
        self.trial_id, self.attempt = raw.get("trial_id"), raw.get("attempt")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        super().__init__(f"failed: this worker cannot run the trial it was given: {problems}")


def _detail_of(response: httpx.Response) -> str:
    """What an API refusal says: its JSON ``detail``, else its text (a proxy's HTML page, a
    JSON list or string), at most 500 characters; never raises."""
    try:
        body = response.json()
    except ValueError:  # not JSON (JSONDecodeError), or not text (UnicodeDecodeError)
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(response.text if detail is None else detail)[:500]


def describe_refusal(response: httpx.Response) -> str:
    """An API refusal in one line: its status and detail."""
    return f"HTTP {response.status_code}: {_detail_of(response)}"


class Client:
    """The hpsearch API over HTTP.

    ``connect_deadline``: how long protocol calls keep retrying without an answer.
    ``stopping``: the worker was asked to stop (``ask`` gives up). ``hurry``: the stop grace is
    over (every protocol call gives up instead of retrying, and waits at most 2 s for an
    answer)."""

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_deadline: float = 120.0,
        stopping: threading.Event | None = None,
        hurry: threading.Event | None = None,
    ) -> None:
        self.url = _checked_api_url(api_url)
        self.api_url = self.url
        self.timeout = timeout
        self.deadline = connect_deadline
        self.stopping = stopping or threading.Event()
        self.hurry = hurry or threading.Event()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token_sent = bool(token)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    @property
    def http(self) -> httpx.Client:
        """The underlying httpx client (its base URL and token set): for requests this client
        has no method for."""
        return self._http

    # -- user calls: once, every failure an ApiError -------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        subject: str | None = None,
        expect: Sequence[int] = (200,),
        **kwargs: Any,
    ) -> httpx.Response:
        """``method path``; the answer when its status is in ``expect``, else ApiError.
        ``subject`` names what the request is about in the error ("study 3": "study 3 not found
        at ...")."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.url, self.timeout) from exc
        if response.status_code not in expect:
            raise _status_error(response, self.url, subject, self._token_sent)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request``, and the answer's JSON body."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"error: the answer from {self.url} to {method} {path} is not JSON "
                f"({response.headers.get('content-type', 'no content type')}): is --api the "
                "hpsearch API?",
                EXIT_FAILED,
            ) from None

    def fetch_all(
        self, path: str, params: dict[str, Any] | None = None, subject: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Every row of a paginated list, page after page: (rows, the count the API gave)."""
        rows: list[dict[str, Any]] = []
        limit: dict[str, int] = {"limit": PAGE_SIZE}
        while True:
            query = {**(params or {}), "offset": len(rows), **limit}
            try:
                page = self.json("GET", path, params=query, subject=subject)
            except ApiError as exc:
                if not (limit and exc.status == 422 and "limit" in exc.fields):
                    raise
                limit = {}  # the API allows fewer rows a page (HPSEARCH_MAXPAGE_SIZE): its own
                continue
            rows += page["data"]
            if not page["data"] or len(rows) >= page["count"]:
                return rows, int(page["count"])

    def create_study(self, spec: Any, subject: str = "the study spec") -> dict[str, Any]:
        """``POST /studies``: the new study (a 422 names every field at fault)."""
        study: dict[str, Any] = self.json(
            "POST", "/api/v1/studies", json=spec, expect=(201,), subject=subject
        )
        return study

    def study(self, study_id: int) -> dict[str, Any]:
        """``GET /studies/{id}``."""
        study: dict[str, Any] = self.json(
            "GET", f"/api/v1/studies/{study_id}", subject=f"study {study_id}"
        )
        return study

    def studies(self) -> tuple[list[dict[str, Any]], int]:
        """Every study, newest first, and their count."""
        return self.fetch_all("/api/v1/studies")

    def study_action(self, study_id: int, action: str) -> dict[str, Any]:
        """``POST /studies/{id}/stop`` or ``.../resume``: the study after it."""
        study: dict[str, Any] = self.json(
            "POST", f"/api/v1/studies/{study_id}/{action}", subject=f"study {study_id}"
        )
        return study

    def delete_study(self, study_id: int) -> None:
        """``DELETE /studies/{id}``: the study, its trials and Optuna's copy."""
        self.request(
            "DELETE", f"/api/v1/studies/{study_id}", subject=f"study {study_id}", expect=(204,)
        )

    def trials(self, study_id: int, state: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Every trial of a study (in ``state`` only, when given), by number, and their count."""
        params = {"state": state} if state else None
        return self.fetch_all(
            f"/api/v1/studies/{study_id}/trials", params, subject=f"study {study_id}"
        )

    def datasets(self) -> tuple[list[dict[str, Any]], int]:
        """Every uploaded dataset, and their count."""
        return self.fetch_all("/api/v1/datasets")

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """``GET /datasets/{id}``."""
        dataset: dict[str, Any] = self.json(
            "GET", f"/api/v1/datasets/{dataset_id}", subject=f"dataset {dataset_id}"
        )
        return dataset

    def delete_dataset(self, dataset_id: str) -> None:
        """``DELETE /datasets/{id}``."""
        self.request(
            "DELETE",
            f"/api/v1/datasets/{dataset_id}",
            subject=f"dataset {dataset_id}",
            expect=(204,),
        )

    def workers(self) -> list[dict[str, Any]]:
        """``GET /workers``: the workers seen lately and the trials each holds."""
        answer = self.json("GET", "/api/v1/workers")
        rows: list[dict[str, Any]] = answer["data"]
        return rows

    # -- protocol calls: retried through restarts until the connect deadline -------------------

    def _post(
        self,
        path: str,
        body: dict[str, Any],
        give_up: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """POST, retrying through connection errors and 502-504 until the deadline (the
        client's, unless given); ``StopRequestedError`` as soon as ``give_up()`` (default: the
        grace is over)."""
        give_up = give_up or self.hurry.is_set
        retry = _Retry(self, deadline)
        while True:
            timeout: float | httpx.Timeout = self._http.timeout
            if deadline is not None:  # no answer may take longer than what is left
                timeout = min(max(retry.left(), 0.1), _HURRIED_TIMEOUT)
            elif self.hurry.is_set():
                timeout = _HURRIED_TIMEOUT
            try:
                response = self._http.post(path, json=body, timeout=timeout)
                if response.status_code in (401, 403):
                    raise TokenRefusedError(response)
                if response.status_code not in _RETRYABLE_STATUS:
                    retry.answered()
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            retry.wait(problem, give_up)

    def stream(self, path: str) -> Iterator[bytes]:
        """GET ``path``'s body in 1 MiB chunks, retrying (like ``_post``) until it starts; a
        transfer cut short raises ``ConnectionError``, a 404 ``ContentGoneError``, the end of
        the stop grace ``StopRequestedError``."""
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
                            raise ContentGoneError(
                                f"the service no longer has it: {_detail_of(response)}"
                            )
                        response.raise_for_status()
                        try:
                            for chunk in response.iter_bytes(1 << 20):
                                if self.hurry.is_set():
                                    raise StopRequestedError("stopped during a download")
                                yield chunk
                        except httpx.TransportError as exc:
                            raise ConnectionError(f"transfer cut short: {exc}") from exc
                        return
                    problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            retry.wait(problem, self.hurry.is_set)

    @staticmethod
    def _checked(response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (404, 409):
            raise LeaseLostError(_detail_of(response), response.status_code)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def ask(self, request: AskRequest) -> tuple[Assignment | None, float]:
        """A trial, or ``None`` and how long to wait before asking again."""
        response = self._post(
            "/api/v1/workers/ask",
            request.model_dump(),
            give_up=lambda: self.stopping.is_set() or self.hurry.is_set(),
        )
        if response.status_code == 204:
            try:
                wait = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            return None, min(max(wait, 0.0), _LONGEST_WAIT_SECONDS)
        response.raise_for_status()
        answer = response.json()
        try:
            return Assignment.model_validate(answer), 0.0
        except ValidationError as exc:
            raise UnrunnableAssignmentError(answer, exc) from None

    def report(self, trial_id: int, body: EpochReport) -> ReportAnswer:
        """One epoch's metrics; the answer says whether to go on (or prune, or stop)."""
        response = self._post(f"/api/v1/trials/{trial_id}/report", body.model_dump())
        return ReportAnswer.model_validate(self._checked(response))

    def heartbeat(
        self, trial_id: int, body: Heartbeat, give_up: Callable[[], bool] | None = None
    ) -> HeartbeatAnswer:
        """Keep the trial's lease alive."""
        response = self._post(f"/api/v1/trials/{trial_id}/heartbeat", body.model_dump(), give_up)
        return HeartbeatAnswer.model_validate(self._checked(response))

    def tell(self, trial_id: int, body: TellRequest) -> dict[str, Any]:
        """The trial's result: the trial as the service recorded it."""
        response = self._post(f"/api/v1/trials/{trial_id}/tell", body.model_dump(mode="json"))
        return self._checked(response)

    def release(self, trial_id: int, body: ReleaseRequest, hurried: bool = False) -> ReleaseAnswer:
        """Hand a trial back. ``hurried`` (the worker is stopping): within 2.5 s, or
        ``ApiUnreachableError``; otherwise retried like a result."""
        response = self._post(
            f"/api/v1/trials/{trial_id}/release",
            body.model_dump(),
            give_up=(lambda: False) if hurried else None,
            deadline=RELEASE_SECONDS if hurried else None,
        )
        return ReleaseAnswer.model_validate(self._checked(response))


class _Retry:
    """The wait between two tries of one request: backoff to 2 s, a warning now and then, and
    ``ApiUnreachableError`` once the deadline (the client's unless given) has passed without an
    answer."""

    def __init__(self, client: Client, deadline: float | None = None) -> None:
        self._client = client
        self._deadline = client.deadline if deadline is None else deadline
        self._started, self._delay, self._warned = time.monotonic(), 0.2, False

    def left(self) -> float:
        """Seconds left before the deadline."""
        return self._deadline - (time.monotonic() - self._started)

    def answered(self) -> None:
        if self._warned:
            log.info("the API answers again", extra={"api": self._client.url})

    def wait(self, problem: str, give_up: Callable[[], bool]) -> None:
        """Sleep before the next try; ``StopRequestedError`` as soon as ``give_up()``."""
        waited = time.monotonic() - self._started
        if give_up():
            raise StopRequestedError(problem)
        if waited + self._delay > self._deadline:
            raise ApiUnreachableError(
                f"no answer from the API at {self._client.url} for {waited:.0f} s "
                f"(last: {problem}); giving up"
            )
        if not self._warned or (waited > 10 and int(waited) % 10 == 0):
            log.warning(
                "waiting for the API",
                extra={"api": self._client.url, "problem": problem, "waited_s": round(waited, 1)},
            )
            self._warned = True
        until = time.monotonic() + self._delay
        while (left := until - time.monotonic()) > 0:
            if give_up():
                raise StopRequestedError(problem)
            time.sleep(min(left, 0.05))
        self._delay = min(self._delay * 2, 2.0)


def _checked_api_url(api_url: str) -> str:
    """``api_url`` without its trailing slash, refused (exit 2) unless it is an http(s) URL."""
    hint = "give one like http://127.0.0.1:8000 (--api or HPSEARCH_API_URL)"
    try:
        url = httpx.URL(api_url)
    except httpx.InvalidURL as exc:
        raise ApiError(
            f"error: --api: {api_url!r} is not a URL ({exc}): {hint}", EXIT_INVALID
        ) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ApiError(f"error: --api: {api_url!r} is not an http:// URL: {hint}", EXIT_INVALID)
    return api_url.rstrip("/")


def _transport_error(exc: httpx.TransportError, url: str, timeout: float) -> ApiError:
    """No answer: why (refused, unknown host, timeout, broken connection), and what to do."""
    if isinstance(exc, httpx.TimeoutException):
        what = "no connection" if isinstance(exc, httpx.ConnectTimeout) else "no answer"
        return ApiError(
            f"error: cannot reach the hpsearch API at {url} ({what} within {timeout:g} s): "
            "check that it runs and answers there, or pass --timeout SECONDS",
            EXIT_UNREACHABLE,
        )
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        reason, hint = "connection refused", _NO_SERVER_HINT
    elif isinstance(cause, socket.gaierror):
        reason = f"host name not found: {cause.strerror}"
        hint = "check the host in --api / HPSEARCH_API_URL"
    elif isinstance(exc, httpx.ConnectError):
        reason, hint = str(exc) or type(exc).__name__, _NO_SERVER_HINT
    else:  # connected, then the connection broke or the answer was not HTTP
        reason = f"the connection broke: {str(exc).rstrip('.') or type(exc).__name__}"
        hint = "check that --api / HPSEARCH_API_URL is the hpsearch API, and that it runs"
    return ApiError(
        f"error: cannot reach the hpsearch API at {url} ({reason}): {hint}", EXIT_UNREACHABLE
    )


def _status_error(
    response: httpx.Response, url: str, subject: str | None, token_sent: bool
) -> ApiError:
    """An answer the command did not expect, as one line naming the URL, and its exit code."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):  # not the API's error shape: keep its text short
        body = {"detail": " ".join(response.text.split())[:200] or response.reason_phrase}
    detail = str(body.get("detail") or response.reason_phrase)
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    request = f"{response.request.method} {response.request.url.path}"
    if status in (401, 403):
        if status == 401 and not token_sent:
            line = f"error: the API at {url} needs a token (401): {_TOKEN_HINT}"
        else:
            line = f"error: the API at {url} refused the token ({status}: {detail}): {_TOKEN_HINT}"
        return ApiError(line, EXIT_TOKEN_REFUSED, status=status)
    if status == 404:
        line = (
            f"error: {request} not found at {url}: {detail}"
            if subject is None
            else f"error: {subject} not found at {url}"
        )
        return ApiError(line, EXIT_NOT_FOUND, status=status)
    if status in (413, 422):
        lines = [f"{e.get('field')}: {e.get('reason')}" for e in errors]
        return ApiError(
            f"error: the API at {url} refused {subject or request} ({status}): "
            + ("fix these and try again:" if lines else detail),
            EXIT_INVALID,
            lines,
            status=status,
            fields=[str(e.get("field")) for e in errors],
        )
    if status == 409:
        line = f"error: the API at {url} refused: {detail} (409 conflict)"
        return ApiError(line, EXIT_CONFLICT, status=status)
    if status >= 500:
        line = (
            f"error: the API at {url} failed on {request} ({status} {response.reason_phrase}): "
            f"{detail}"
        )
        return ApiError(line, EXIT_FAILED, status=status)
    line = (
        f"error: the API at {url} answered {status} {response.reason_phrase} to {request}: {detail}"
    )
    return ApiError(line, EXIT_FAILED, status=status)
