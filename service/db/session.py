"""Engines and sessions. SQLite gets WAL mode and a busy timeout so that several processes
(API, reaper, Optuna's own engine) can share one file."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_SECONDS = 30
log = logging.getLogger(__name__)


class DatabaseUnreachableError(RuntimeError):
    """The database did not answer within the deadline."""


def database_unavailable(exc: BaseException) -> str | None:
    """The database's one-line complaint when ``exc`` means it cannot be reached (down,
    restarting, connection dropped, SQLite locked); ``None`` for any other error. Optuna's
    storage wraps SQLAlchemy's errors (StorageInternalError): the cause is looked at too."""
    if not isinstance(exc, DBAPIError) and isinstance(exc.__cause__, DBAPIError):
        exc = exc.__cause__
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        lines = str(exc.orig or exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


def connect_args(url: str) -> dict[str, Any]:
    """Driver arguments for ``url`` (ours and Optuna's engine): SQLite waits for the write lock;
    PostgreSQL talks UTF-8 even to a server created without a locale (SQL_ASCII), where psycopg
    would otherwise hand back bytes for text."""
    if url.startswith("sqlite"):
        return {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    if url.startswith("postgresql"):
        return {"client_encoding": "utf8"}
    return {}


def make_engine(url: str) -> Engine:
    """An engine for ``url``; creates the SQLite file's folder and turns on WAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args(url))

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(
        url, connect_args=connect_args(url), pool_pre_ping=True, pool_size=10, max_overflow=20
    )


def wait_for_database(engine: Engine, deadline_seconds: float) -> None:
    """Return once the database answers; log while waiting (a container's database may still be
    starting, or restarting); raise DatabaseUnreachableError after ``deadline_seconds``."""
    where = engine.url.render_as_string(hide_password=True)
    started, delay, last_log = time.monotonic(), 0.2, -10.0
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            break
        except OperationalError as exc:
            problem = database_unavailable(exc) or type(exc).__name__
            waited = time.monotonic() - started
            if waited >= deadline_seconds:
                raise DatabaseUnreachableError(
                    f"the database at {where} did not answer in {waited:.0f} s "
                    f"(HPSEARCH_DATABASE_WAIT_SECONDS={deadline_seconds:g}); last error: {problem}"
                ) from None
            if waited - last_log >= 5:
                log.warning(
                    "waiting for the database",
                    extra={"database": where, "waited_s": round(waited, 1), "problem": problem},
                )
                last_log = waited
            time.sleep(min(delay, max(0.0, deadline_seconds - waited)))
            delay = min(delay * 2, 2.0)
    if time.monotonic() - started > 1:
        log.info("the database answers", extra={"database": where})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commits when the block ends, rolls back when it raises."""
    with factory() as session, session.begin():
        yield session
