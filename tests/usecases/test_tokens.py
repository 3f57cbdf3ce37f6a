"""Tokens, decided in process on SQLite and PostgreSQL with a fake clock: kept hashed, refused
once revoked or expired, touched at most once a minute, and a crashed serve's idle local-worker
tokens revoked without touching a live serve's. What a request sees of them (401, 403, the
dashboard's cookie, the CLI) is tested through a real API in tests/service/test_auth.py."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from service.auth import tokens
from service.clock import FakeClock
from service.context import ServiceContext
from service.db.models import ApiToken
from service.errors import NotFoundError


def listed(ctx: ServiceContext, token_id: str) -> dict[str, Any]:
    """The token as ``hpsearch token list`` shows it."""
    (row,) = [t for t in tokens.list_tokens(ctx) if t["id"] == token_id]
    return row


def test_a_token_is_kept_hashed_and_refused_once_revoked(ctx: ServiceContext) -> None:
    row, secret = tokens.create_token(ctx, "user", "carol-in-process")
    assert secret.startswith("hpsu_") and row["hint"] == secret[:9] + "…"
    with ctx.sessions() as s:
        stored = s.scalars(select(ApiToken).where(ApiToken.id == row["id"])).one()
        assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in {stored.token_hash, stored.hint, stored.name}
    principal = tokens.authenticate(ctx, secret)
    assert principal is not None and (principal.name, principal.kind) == (
        "carol-in-process",
        "user",
    )
    assert tokens.authenticate(ctx, secret + "x") is None
    assert [r["id"] for r in tokens.revoke_token(ctx, "carol-in-process")] == [row["id"]]
    assert tokens.authenticate(ctx, secret) is None and not tokens.is_active(ctx, row["id"])
    with pytest.raises(NotFoundError, match="no active token"):
        tokens.revoke_token(ctx, "carol-in-process")
    assert listed(ctx, row["id"])["status"] == "revoked"


def test_a_token_expires_at_its_lifetime(ctx: ServiceContext, clock: FakeClock) -> None:
    row, secret = tokens.create_token(ctx, "worker", "temp-in-process", timedelta(hours=1))
    clock.advance(3599)
    assert tokens.authenticate(ctx, secret) is not None
    clock.advance(1)
    assert tokens.authenticate(ctx, secret) is None and not tokens.is_active(ctx, row["id"])
    assert listed(ctx, row["id"])["status"] == "expired"


def test_last_use_is_written_at_most_once_a_minute(ctx: ServiceContext, clock: FakeClock) -> None:
    row, secret = tokens.create_token(ctx, "user", "touched-in-process")

    def last_used() -> str | None:
        used: str | None = listed(ctx, row["id"])["last_used_at"]
        return used

    assert last_used() is None
    tokens.authenticate(ctx, secret)
    first = last_used()
    assert first == clock.now().isoformat()
    clock.advance(30)
    tokens.authenticate(ctx, secret)
    assert last_used() == first
    clock.advance(31)
    tokens.authenticate(ctx, secret)
    assert last_used() == clock.now().isoformat()


def test_a_serve_revokes_only_the_idle_local_tokens_of_crashed_serves(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    """A serve that crashed cannot revoke its workers' token: the next serve to start revokes
    it once it is unused for HPSEARCH_LOCAL_TOKEN_STALE_SECONDS, and never one in use."""
    hour = timedelta(hours=1)
    crashed, crashed_secret = tokens.create_local_workers_token(ctx, "box-1-aaaaaa", hour)
    tokens.authenticate(ctx, crashed_secret)  # used, then its serve crashed
    never_used, _ = tokens.create_local_workers_token(ctx, "box-3-cccccc", hour)
    lookalike, _ = tokens.create_token(ctx, "user", tokens.LOCAL_WORKERS_TOKEN + " (a person)")
    clock.advance(2 * 3600)
    running, secret = tokens.create_local_workers_token(ctx, "box-2-bbbbbb", hour)
    clock.advance(3000)
    assert tokens.authenticate(ctx, secret) is not None  # in use by its serve's workers
    clock.advance(1200)  # box-2's token: created 70 min ago, last used 20 min ago
    new, _ = tokens.create_local_workers_token(ctx, "box-4-dddddd", hour)
    ours = {crashed["id"], never_used["id"], lookalike["id"], running["id"], new["id"]}
    status = {t["id"]: t["status"] for t in tokens.list_tokens(ctx) if t["id"] in ours}
    assert status == {
        crashed["id"]: "revoked",
        never_used["id"]: "revoked",
        running["id"]: "active",
        lookalike["id"]: "active",  # a user token: not serve's
        new["id"]: "active",
    }
    assert new["name"] == "hpsearch serve: local workers (box-4-dddddd)"
