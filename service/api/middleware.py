"""Pure ASGI middleware that keeps the API safe to expose:

- ``LoopbackGuard``: with auth off, answer only on loopback addresses (unless told otherwise).
- ``BodyLimit``: a JSON body must be at most ``max_request_bytes`` and arrive within
  ``request_body_seconds``; an upload's chunks must keep coming (their size is the upload's own
  limit). 413 and 408 answer before the application sees the request.
- ``Lanes``: user requests share ``user_request_slots``; the worker protocol has a lane of its
  own, so a crowd of heavy or slow user requests never holds every thread and database
  connection while workers wait to report.
- ``SecurityHeaders``: ``nosniff``, no framing, no referrer, on every answer.
"""

from __future__ import annotations

import ipaddress
import logging
import re

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import refusal

log = logging.getLogger(__name__)

# The worker protocol and the probes: never queued behind user requests.
_WORKER_LANE = re.compile(
    r"^/(healthz|readyz|api/v1/workers/ask|api/v1/trials/\d+/(report|heartbeat|tell)"
    r"|api/v1/datasets/[^/]+/content)$"
)
UPLOAD_PATH = "/api/v1/datasets"

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LoopbackGuard:
    """With auth off, a request that came in on a non-loopback address gets 403: the API must
    not be open to a network by accident (``HPSEARCH_ALLOW_NO_AUTH=true`` opens it anyway)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server and server[0] and not is_loopback(server[0]):
            answer = refusal(
                403,
                f"this API runs without authentication and answers only on loopback "
                f"addresses, not on {server[0]}: set HPSEARCH_AUTH=on (and give clients "
                "tokens), or HPSEARCH_ALLOW_NO_AUTH=true on a trusted network",
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Size and time limits on request bodies, enforced before the application runs."""

    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float) -> None:
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            await self.app(scope, self._stalling(scope, receive), send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        with anyio.move_on_after(self.seconds) as scope_timer:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        if scope_timer.cancelled_caught:
            log.warning(
                "request body too slow: dropped",
                extra={"path": scope["path"], "received_bytes": size},
            )
            answer = refusal(
                408,
                f"the request body did not arrive within {self.seconds:g} s "
                "(HPSEARCH_REQUEST_BODY_SECONDS)",
                headers={"Connection": "close"},
            )
            await answer(scope, receive, send)
            return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _stalling(self, scope: Scope, receive: Receive) -> Receive:
        """An upload whose next chunk takes longer than the limit is treated as abandoned."""

        async def timed() -> Message:
            with anyio.move_on_after(self.seconds):
                return await receive()
            scope.setdefault("state", {})["body_stalled"] = self.seconds
            return {"type": "http.disconnect"}

        return timed

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = refusal(
            413,
            f"the request body passes the limit of {self.max_bytes:,} bytes "
            "(HPSEARCH_MAX_REQUEST_BYTES)",
            field="(body)",
            headers={"Connection": "close"},
        )
        await answer(scope, receive, send)


class Lanes:
    """At most ``slots`` user requests at once in this process; the rest wait their turn
    (holding no thread). Worker-protocol requests and the probes pass straight through."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app = app
        self.slots = slots
        self._user: anyio.Semaphore | None = None  # made in the event loop that serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _WORKER_LANE.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self._user is None:
            self._user = anyio.Semaphore(self.slots)
        async with self._user:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Headers every answer carries (the dashboard's page adds its Content-Security-Policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in present),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)
