"""Pure ASGI middleware that keeps the API safe to expose:

- ``LoopbackGuard``: with auth off, answer only on loopback addresses (unless told otherwise).
- ``BodyLimit``: a JSON body must be at most ``max_request_bytes`` and arrive within
  ``request_body_seconds``; an upload's chunks must keep coming (their size is the upload's own
  limit). 413 and 408 answer before the application sees the request.
- ``Lanes``: user requests share ``user_request_slots`` and run at a lower CPU priority (an event
  loop and threads of their own, niced); the worker protocol has a lane of its own at the
  process's priority, so a crowd of heavy or slow user requests never holds every thread and
  database connection while workers wait to report, nor takes the CPU from training beside it.
- ``SecurityHeaders``: ``nosniff``, no framing, no referrer, on every answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import refusal

log = logging.getLogger(__name__)

# The worker protocol and the probes: never queued behind user requests.
_WORKER_LANE = re.compile(
    r"^/(healthz|readyz|api/v1/workers/ask|api/v1/trials/\d+/(report|heartbeat|tell|release)"
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


def replayed(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body``, read already, as one message, then whatever
    ``receive`` says next (a disconnect): for middleware that reads a body before the app."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
        await self.app(scope, replayed(b"".join(chunks), receive), send)

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


# How much less CPU priority user requests get than the worker protocol (``nice`` steps): at
# 10, a thread of the user lane gets about a tenth of a core that a busy training process
# shares with it (Linux's weights: 110 against 1024), and all of an idle one.
USER_LANE_NICE = 10


class Lanes:
    """At most ``slots`` user requests at once in this process; the rest wait their turn
    (holding no thread). Worker-protocol requests and the probes pass straight through.

    User requests run in a lane of their own (``UserLane``): an event loop in a thread whose
    CPU priority is ``nice`` steps below the process's, as are the threads it runs endpoints
    in. A crowd reading the dashboard then takes only the CPU that training beside the API
    (``hpsearch serve``'s workers) leaves idle, and the protocol keeps the server's loop.
    """

    def __init__(self, app: ASGIApp, slots: int, nice: int = USER_LANE_NICE) -> None:
        self.app = app
        self.slots = slots
        self.nice = nice
        self._user: anyio.Semaphore | None = None  # made in the event loop that serves
        self._lane: UserLane | None = None
        self._lane_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        if scope["type"] != "http" or _WORKER_LANE.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self._user is None:
            self._user = anyio.Semaphore(self.slots)
        async with self._user:
            lane = self._user_lane()
            if lane is None:
                await self.app(scope, receive, send)
            else:
                await lane.run(self.app, scope, receive, send)

    def _user_lane(self) -> UserLane | None:
        """The user lane, started on first use; None when there is none to have (``nice`` 0,
        or an event loop other than asyncio's)."""
        if self.nice <= 0:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # served by another async library (trio): no lane to hop to
            return None
        with self._lane_lock:
            if self._lane is None or not self._lane.alive:
                self._lane = UserLane(self.nice)
            return self._lane if self._lane.alive else None

    def _closing(self, send: Send) -> Send:
        """The lifespan's ``send``: the user lane stops with the application."""

        async def closing(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown"):
                with self._lane_lock:
                    lane, self._lane = self._lane, None
                if lane is not None:
                    lane.stop()
            await send(message)

        return closing


class UserLane:
    """An asyncio event loop in a thread of its own, ``nice`` steps below the process's CPU
    priority; the threads it starts for endpoints inherit that priority (Linux: a thread's
    nice value is its own, and a new thread starts with its creator's). Raising one's own nice
    value needs no privilege; should the system refuse it anyway, the lane runs at the
    process's priority and says so once."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="user-lane", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._loop is not None and self._loop.is_running()

    def _serve(self) -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        except (AttributeError, OSError) as exc:  # not Linux, or a system that refuses it
            log.warning(
                "user requests run at the worker protocol's CPU priority: %s",
                exc,
                extra={"nice": self.nice},
            )
        try:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.call_soon(self._ready.set)
            loop.run_forever()
            loop.close()
        finally:
            self._ready.set()  # never leave the first request waiting for a lane that failed

    def stop(self) -> None:
        """End the loop (requests still in it are abandoned: the server is shutting down)."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app(scope, receive, send)`` in the lane; ``receive`` and ``send`` still run in the
        calling loop (the server's, which owns the connection)."""
        assert self._loop is not None
        server = asyncio.get_running_loop()
        pending: Future[Message] | None = None

        async def lane_receive() -> Message:
            # A receive given up here (``Request.is_disconnected``, a timeout) goes on in the
            # server's loop, and its message is the next receive's: none is ever lost.
            nonlocal pending
            if pending is None:
                pending = asyncio.run_coroutine_threadsafe(_awaited(receive), server)
            message: Message = await asyncio.shield(asyncio.wrap_future(pending))
            pending = None
            return message

        async def lane_send(message: Message) -> None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(_awaited(lambda: send(message)), server)
            )

        done: Future[None] = asyncio.run_coroutine_threadsafe(
            _awaited(lambda: app(scope, lane_receive, lane_send)), self._loop
        )
        await asyncio.wrap_future(done)


async def _awaited(call: Callable[[], Awaitable[Any]]) -> Any:
    return await call()


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
