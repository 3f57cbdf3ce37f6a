"""The probes: ``/healthz`` (the process is up) and ``/readyz`` (its database answers, with the
current schema)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import (
    ContextDep,
)
from service.db.migrate import current_revision, head_revision
from service.schemas import ErrorBody, Health, Readiness

log = logging.getLogger(__name__)

health = APIRouter(tags=["health"])
probes_router = APIRouter(tags=["health"])


@health.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@probes_router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": ErrorBody,
            "description": "not ready: the database is away or its schema is behind",
        }
    },
)
def readyz(ctx: ContextDep) -> JSONResponse:
    """The database answers and its schema is current."""
    try:
        with ctx.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current, head = current_revision(ctx.engine), head_revision()
    except Exception as exc:  # any database failure means not ready
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "detail": f"database: {exc}", "errors": []},
        )
    if current != head:
        return JSONResponse(
            status_code=503,
            content={
                "status": "unavailable",
                "detail": f"schema at {current}, expected {head}: run `hpsearch migrate`",
                "errors": [],
            },
        )
    return JSONResponse({"status": "ready"})
