"""``create_app``: the FastAPI application, its reaper thread, and the uvicorn factory."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hpsearch import __version__
from hpsearch.logs import configure_logging
from service import analysis, datasets
from service.api.errors import install_error_handlers
from service.api.routes import (
    analysis_router,
    datasets_router,
    health,
    studies_router,
    workers_router,
)
from service.config import Settings, get_settings
from service.context import ServiceContext
from service.dashboard.routes import router as dashboard_router
from service.db.migrate import upgrade
from service.db.session import DatabaseUnreachableError, database_unavailable, wait_for_database
from service.scheduling import reap

log = logging.getLogger(__name__)


# How often the reaper sweeps away what crashed uploads left behind.
SWEEP_SECONDS = 30.0


def _reaper(ctx: ServiceContext, stop: threading.Event) -> None:
    outage: str | None = None  # the database's complaint while it is away, logged once
    swept = 0.0
    while not stop.wait(ctx.settings.reaper_seconds):
        try:
            reap(ctx)
            if time.monotonic() - swept > min(SWEEP_SECONDS, ctx.settings.upload_stale_seconds):
                datasets.sweep(ctx)
                swept = time.monotonic()
        except Exception as exc:  # the next round tries again; never kill the API over it
            problem = database_unavailable(exc)
            if problem is None:
                log.exception("reaper round failed")
            elif outage is None:
                log.warning(
                    "reaper paused: the database is unavailable", extra={"problem": problem}
                )
            outage = problem
            continue
        if outage is not None:
            log.info("reaper resumed: the database answers again")
            outage = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    ctx = ServiceContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            wait_for_database(ctx.engine, settings.database_wait_seconds)
        except DatabaseUnreachableError as exc:
            log.critical("%s; the API does not start", exc)
            raise
        if settings.auto_migrate:
            upgrade(ctx.engine)
        stop = threading.Event()
        thread = threading.Thread(target=_reaper, args=(ctx, stop), daemon=True, name="reaper")
        thread.start()
        log.info("api started", extra={"database": ctx.engine.url.render_as_string()})
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)
            analysis.shutdown()
            ctx.engine.dispose()

    app = FastAPI(
        title="hpsearch",
        version=__version__,
        lifespan=lifespan,
        description="Hyperparameter search for Keras models: launch studies, "
        "watch trials; workers ask for trials and report epochs.",
    )
    app.state.context = ctx
    install_error_handlers(app)
    app.include_router(health)
    app.include_router(studies_router)
    app.include_router(workers_router)
    app.include_router(analysis_router)
    app.include_router(datasets_router)
    app.include_router(dashboard_router)
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory service.api.app:app_factory``: logging set up from settings."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
