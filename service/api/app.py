"""``create_app``: the FastAPI application, its reaper thread, and the uvicorn factory."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse

from hpsearch import __version__
from hpsearch.logs import configure_logging
from service.api.auth import USER, USER_OR_WORKER, WORKER, session_router
from service.api.errors import ERROR_RESPONSES, install_error_handlers
from service.api.health import health, probes_router
from service.api.json_guard import JsonGuard
from service.api.lifecycle import Drain, DrainGate
from service.api.middleware import BodyLimit, Lanes, LoopbackGuard, SecurityHeaders
from service.auth import tokens as auth
from service.clock import Clock
from service.config import Settings, get_settings
from service.context import ServiceContext
from service.dashboard.routes import router as dashboard_router
from service.datasets import service as datasets
from service.datasets.routes import dataset_content_router, datasets_router
from service.db.migrate import upgrade
from service.db.session import DatabaseUnreachableError, database_unavailable, wait_for_database
from service.studies import analysis
from service.studies.routes import analysis_router, studies_router
from service.trials.recovery import reap
from service.trials.routes import worker_list_router, workers_router

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


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    ctx = ServiceContext.from_settings(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            wait_for_database(ctx.engine, settings.database_wait_seconds)
        except DatabaseUnreachableError as exc:
            log.critical("%s; the API does not start", exc)
            raise
        if settings.auto_migrate:
            upgrade(ctx.engine)
        _register_tokens(ctx)
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
        "watch trials; workers ask for trials and report epochs. With HPSEARCH_AUTH=on, "
        "every endpoint but /healthz needs `Authorization: Bearer <token>`: a user token, "
        "or a worker token for the worker protocol.",
        # Served below, behind a user token like the rest of the API.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ctx
    # Begun by ``hpsearch serve`` on SIGTERM (service.api.lifecycle): no new work, then exit.
    app.state.drain = Drain()
    install_error_handlers(app)
    app.include_router(health)
    app.include_router(session_router, responses=ERROR_RESPONSES)
    for router, who in (
        (studies_router, USER),
        (workers_router, WORKER),
        (analysis_router, USER),
        (datasets_router, USER),
        (dataset_content_router, USER_OR_WORKER),
        (probes_router, USER_OR_WORKER),
        (worker_list_router, USER),
    ):
        app.include_router(router, dependencies=[who], responses=ERROR_RESPONSES)
    app.include_router(dashboard_router)
    _add_docs(app)

    # The last added runs first: headers on every answer, then the loopback rule, then CORS
    # (only for configured origins), then the drain (no new work while shutting down), then the
    # limits on bodies, then the lanes.
    app.add_middleware(Lanes, slots=settings.user_request_slots)
    app.add_middleware(JsonGuard)  # inside the body limits: too deep, or a NUL -> 422
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_bytes, seconds=settings.request_body_seconds
    )
    app.add_middleware(
        DrainGate,
        drain=app.state.drain,
        ask_again=settings.idle_retry_seconds,
        come_back=settings.drain_seconds,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if not settings.auth and not settings.allow_no_auth:
        app.add_middleware(LoopbackGuard)
    app.add_middleware(SecurityHeaders)
    return app


# /docs is served whole by the API, for machines without internet: Swagger UI's script and style
# from the fastapi-offline package (what FastAPI's own page loads from a CDN), the page and its
# start-up script from docs_static/.
DOCS_STATIC = Path(__file__).parent / "docs_static"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
_DOCS_ASSETS = {
    "swagger-ui-bundle.js": (SWAGGER_UI, "text/javascript", "public, max-age=86400"),
    "swagger-ui.css": (SWAGGER_UI, "text/css", "public, max-age=86400"),
    "init.js": (DOCS_STATIC, "text/javascript", "no-cache"),
}
# Only the service's own scripts, and no inline one (Swagger UI starts from init.js). Inline
# styles stay allowed: Swagger UI sets style attributes. Its icons are data: URIs.
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def _add_docs(app: FastAPI) -> None:
    """The OpenAPI schema and Swagger UI, behind a user token (the dashboard's session
    cookie opens them in a browser). Swagger UI's files need none: they hold no data."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=[USER])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[USER])
    def docs() -> FileResponse:
        return FileResponse(
            DOCS_STATIC / "index.html",
            media_type="text/html",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY,
            },
        )

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        # A fixed list: no path reaches the file system.
        if name not in _DOCS_ASSETS:
            raise HTTPException(status_code=404, detail=f"no such file of the API docs: {name!r}")
        folder, media_type, cache = _DOCS_ASSETS[name]
        return FileResponse(folder / name, media_type=media_type, headers={"Cache-Control": cache})


def _register_tokens(ctx: ServiceContext) -> None:
    """Register the deployment's worker token (hashed); say how to make one when auth is on
    and there is none."""
    settings = ctx.settings
    if settings.worker_token is not None:
        auth.register_token(
            ctx, "worker", "HPSEARCH_WORKER_TOKEN", settings.worker_token.get_secret_value()
        )
    if settings.auth and not any(t["status"] == "active" for t in auth.list_tokens(ctx)):
        log.warning(
            "auth is on and there is no token yet: every request will answer 401; "
            "create one with `hpsearch token create --kind user NAME`"
        )
    elif not settings.auth:
        log.warning("auth is off: anyone who reaches this API can use it (HPSEARCH_AUTH=on)")


def app_factory() -> FastAPI:
    """For ``uvicorn --factory service.api.app:app_factory``: logging set up from settings."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
