"""API tokens: created, listed and revoked by ``hpsearch token``, checked on every request when
``HPSEARCH_AUTH=on``.

Two kinds: a **user** token launches, stops and reads studies and datasets; a **worker** token
only speaks the worker protocol (and fetches the datasets its trials name). A token is shown once,
when it is created; the database keeps its SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, select, update

from service.context import ServiceContext
from service.db.models import ApiToken
from service.errors import NotFoundError

log = logging.getLogger(__name__)

TokenKind = Literal["user", "worker"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("user", "worker")
# Secret scanners (and people) can tell the kind from the prefix.
_PREFIX = {"user": "hpsu_", "worker": "hpsw_"}
# Far enough for any deployment, near enough that an expiry date never overflows.
MAX_TOKEN_LIFETIME = timedelta(days=36_500)
# last_used_at is written at most this often per token, not on every request.
_TOUCH_SECONDS = 60


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's id, name and kind."""

    token_id: str
    name: str
    kind: TokenKind


def digest(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _row(t: ApiToken, now: datetime) -> dict[str, Any]:
    if t.revoked_at is not None:
        status = "revoked"
    elif t.expires_at is not None and t.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "id": t.id,
        "name": t.name,
        "kind": t.kind,
        "hint": t.hint + "…",
        "status": status,
        "created_at": t.created_at.isoformat(),
        "expires_at": t.expires_at and t.expires_at.isoformat(),
        "last_used_at": t.last_used_at and t.last_used_at.isoformat(),
        "revoked_at": t.revoked_at and t.revoked_at.isoformat(),
    }


def create_token(
    ctx: ServiceContext,
    kind: TokenKind,
    name: str,
    expires_in: timedelta | None = None,
    secret: str | None = None,
) -> tuple[dict[str, Any], str]:
    """A new token: (its row, the secret; shown once). ``secret``: register one given by a
    deployment instead of generating one."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TOKEN_KINDS)}, got {kind!r}")
    secret = secret or _PREFIX[kind] + secrets.token_urlsafe(32)
    token = ApiToken(
        id="tok_" + secrets.token_hex(6),
        name=name,
        kind=kind,
        token_hash=digest(secret),
        hint=secret[:9],
        created_at=ctx.clock.now(),
        expires_at=ctx.clock.now() + expires_in if expires_in else None,
    )
    with ctx.sessions.begin() as session:
        session.add(token)
        session.flush()
        row = _row(token, ctx.clock.now())
    log.info("token created", extra={"token": token.id, "token_name": name, "kind": kind})
    return row, secret


def list_tokens(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every token, revoked and expired ones too, oldest first."""
    with ctx.sessions() as session:
        tokens = session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))
        return [_row(t, ctx.clock.now()) for t in tokens]


def revoke_token(ctx: ServiceContext, id_or_name: str) -> list[dict[str, Any]]:
    """Revoke the token with this id, or every active token with this name; the revoked rows.
    Takes effect on the next request (tokens are looked up every time, never cached)."""
    with ctx.sessions.begin() as session:
        tokens = list(
            session.scalars(
                select(ApiToken).where(
                    or_(ApiToken.id == id_or_name, ApiToken.name == id_or_name),
                    ApiToken.revoked_at.is_(None),
                )
            )
        )
        if not tokens:
            raise NotFoundError(f"no active token with id or name {id_or_name!r}")
        for t in tokens:
            t.revoked_at = ctx.clock.now()
        rows = [_row(t, ctx.clock.now()) for t in tokens]
    for r in rows:
        log.info("token revoked", extra={"token": r["id"], "token_name": r["name"]})
    return rows


def authenticate(ctx: ServiceContext, token: str) -> Principal | None:
    """The active token ``token`` is, or ``None`` (unknown, revoked or expired)."""
    hashed = digest(token)
    now = ctx.clock.now()
    with ctx.sessions() as session:
        t = session.scalars(select(ApiToken).where(ApiToken.token_hash == hashed)).one_or_none()
        if t is None or t.revoked_at is not None:
            return None
        if t.expires_at is not None and t.expires_at <= now:
            return None
        principal = Principal(t.id, t.name, t.kind)  # type: ignore[arg-type]
        if t.last_used_at is None or now - t.last_used_at > timedelta(seconds=_TOUCH_SECONDS):
            session.execute(update(ApiToken).where(ApiToken.id == t.id).values(last_used_at=now))
            session.commit()
    return principal


def register_token(ctx: ServiceContext, kind: TokenKind, name: str, secret: str) -> None:
    """Make a secret the deployment holds (``HPSEARCH_WORKER_TOKEN``) a token, once. A revoked
    one stays revoked: restarting the API never brings it back."""
    with ctx.sessions() as session:
        existing = session.scalars(
            select(ApiToken).where(ApiToken.token_hash == digest(secret))
        ).one_or_none()
    if existing is None:
        create_token(ctx, kind, name, secret=secret)
    elif existing.revoked_at is not None:
        log.warning(
            "the %s token from the environment is revoked: requests with it answer 401",
            kind,
            extra={"token": existing.id, "token_name": existing.name},
        )
    elif existing.kind != kind:
        log.warning(
            "the token from the environment is a %s token, not a %s token",
            existing.kind,
            kind,
            extra={"token": existing.id},
        )


# ``hpsearch serve``'s own worker tokens: one per serve process, named after it.
LOCAL_WORKERS_TOKEN = "hpsearch serve: local workers"


def create_local_workers_token(
    ctx: ServiceContext, instance: str, stale_after: timedelta
) -> tuple[dict[str, Any], str]:
    """A worker token for the local workers of the serve process ``instance`` (its row, its
    secret). Never revokes another serve's token while that one is in use: several serve
    processes share one database. Those of serves that crashed (no clean exit to revoke them)
    are revoked here once unused for ``stale_after``: a live serve's workers use theirs every
    few seconds (asking, heartbeating), so an idle one has no live holder."""
    revoke_idle_tokens(ctx, "worker", LOCAL_WORKERS_TOKEN, stale_after)
    return create_token(ctx, "worker", f"{LOCAL_WORKERS_TOKEN} ({instance})")


def revoke_idle_tokens(
    ctx: ServiceContext, kind: TokenKind, name_prefix: str, idle: timedelta
) -> list[dict[str, Any]]:
    """Revoke the active ``kind`` tokens whose name starts with ``name_prefix`` and that were
    last used (or, never used, created) more than ``idle`` ago; the revoked rows."""
    cutoff = ctx.clock.now() - idle
    with ctx.sessions.begin() as session:
        tokens = list(
            session.scalars(
                select(ApiToken).where(
                    ApiToken.kind == kind,
                    ApiToken.name.startswith(name_prefix, autoescape=True),
                    ApiToken.revoked_at.is_(None),
                    func.coalesce(ApiToken.last_used_at, ApiToken.created_at) < cutoff,
                )
            )
        )
        for t in tokens:
            t.revoked_at = ctx.clock.now()
        rows = [_row(t, ctx.clock.now()) for t in tokens]
    for r in rows:
        log.info(
            "idle token revoked",
            extra={"token": r["id"], "token_name": r["name"], "last_used": r["last_used_at"]},
        )
    return rows


def is_active(ctx: ServiceContext, token_id: str) -> bool:
    """Whether the token with this id exists and is neither revoked nor expired."""
    with ctx.sessions() as session:
        t = session.get(ApiToken, token_id)
        return (
            t is not None
            and t.revoked_at is None
            and (t.expires_at is None or t.expires_at > ctx.clock.now())
        )


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``: a token's lifetime on the command line."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise ValueError(f"expected a number and d, h, m or s (e.g. 30d), got {text!r}")
    seconds = int(number) * int(timedelta(**{units[unit]: 1}).total_seconds())
    if seconds > MAX_TOKEN_LIFETIME.total_seconds():
        raise ValueError(f"{text!r} is longer than {MAX_TOKEN_LIFETIME.days} days")
    return timedelta(seconds=seconds)
