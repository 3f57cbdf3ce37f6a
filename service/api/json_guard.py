"""``JsonGuard``: what no JSON body of this API may hold, refused (422, naming the field) before
the application parses it, on every endpoint alike.

- Nesting deeper than ``MAX_JSON_DEPTH`` levels of objects and arrays. No request needs more
  than a few (a study spec's deepest value, a search choice, is at depth 4), and every step
  after the parser (validation, error messages, serialization) recurses once per level.
- A NUL character (``\\u0000``) in any string: PostgreSQL stores none in a text column (psycopg
  raises ``DataError``), and no field of this API has a use for one.

Bodies are checked as bytes, at C speed (no Python step per byte or token: a crafted body must
not hold the event loop): most have fewer brackets than the limit in all and hold no
``\\u0000``, and are passed on after a count and a search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from email.message import Message as MimeHeader

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import refusal
from service.api.middleware import replayed

MAX_JSON_DEPTH = 32
# A refusal names the top-level field at fault when the body is at most this large (parsing it is
# how the field is found; every body this API documents is far smaller); past it, "(body)".
NAMED_UP_TO_BYTES = 64 * 1024

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
# Every bracket as "[" or "]", everything else dropped: nesting is all that is left.
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ESCAPED_BACKSLASH, _NUL = b"\\\\", b"\\u0000"
DEEP, NUL = "deep", "nul"


def parsed_as_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body with this ``Content-Type`` as JSON (as its request handler
    decides: no type, ``application/json`` or ``application/*+json``)."""
    if not content_type:
        return True
    header = MimeHeader()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def too_deep(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests objects and arrays more than ``max_depth`` levels deep (the body
    itself is level 1). In C-speed passes, never one Python step per byte: strings cut out,
    the brackets kept, then each pass removes every innermost pair; what is left after
    ``max_depth`` passes is deeper. (Unbalanced brackets are left for the parser to refuse.)"""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", body).translate(_SQUARE, _NOT_BRACKET)
    for _ in range(max_depth):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    return b"[]" in brackets


def holds_nul(body: bytes) -> bool:
    """Whether a string of ``body`` holds a NUL character: a ``\\u0000`` escape that is not
    the text after an escaped backslash (``\\\\u0000``)."""
    return _NUL in body and _NUL in body.replace(_ESCAPED_BACKSLASH, b"")


def first_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """What ``body`` holds that no request may: (the top-level field it is under, or
    ``(body)``; ``DEEP`` or ``NUL``), or ``None``."""
    if too_deep(body, max_depth):
        return _field_of(body, lambda text: too_deep(text, max_depth - 1)), DEEP
    if holds_nul(body):
        return _field_of(body, holds_nul), NUL
    return None


def _field_of(body: bytes, holds: Callable[[bytes], bool]) -> str:
    """The first top-level field whose value ``holds`` the problem; ``(body)`` when the body
    is not an object, cannot be parsed (the parser's own recursion limit, or bad JSON), or is
    larger than ``NAMED_UP_TO_BYTES`` (so that a refusal never costs more than a small parse)."""
    if len(body) > NAMED_UP_TO_BYTES:
        return "(body)"
    try:
        members = json.loads(body)
    except (ValueError, RecursionError):
        return "(body)"
    if isinstance(members, dict):
        for key, value in members.items():
            try:
                if holds(json.dumps(value).encode()):
                    return str(key)
            except (ValueError, RecursionError):
                return str(key)
    return "(body)"


class JsonGuard:
    """Refuse a JSON body nested past ``max_depth`` or holding a NUL character with 422, before
    the application (and its parser) sees it. Runs inside ``BodyLimit``: the body it reads is
    already within the size limit."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app, self.max_depth = app, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        # The first Content-Type, as Starlette reads it (a dict of the headers keeps the last:
        # a second header would let a body past the guard that the application parses).
        content_type = next(
            (value for key, value in scope["headers"] if key == b"content-type"), b""
        ).decode("latin-1")
        if not parsed_as_json(content_type):
            await self.app(scope, receive, send)  # uploads: multipart, streamed
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = self._problem(body)
        if problem is not None:
            field, reason = problem
            await refusal(422, reason, field=field)(scope, receive, send)
            return
        await self.app(scope, replayed(body, receive), send)

    def _problem(self, body: bytes) -> tuple[str, str] | None:
        found = first_problem(body, self.max_depth)
        if found is None:
            return None
        field, kind = found
        if kind == DEEP:
            return field, (
                f"nested more than {self.max_depth} levels deep (objects and arrays); "
                "no field of this API needs more than a few"
            )
        return field, (
            "holds a NUL character (\\u0000), which no field of this API accepts "
            "(PostgreSQL cannot store one)"
        )
