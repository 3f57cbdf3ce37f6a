"""The service's commands: ``serve``, ``migrate``, ``token`` and ``dashboard`` (the ``study``
and ``dataset`` commands are the client's: ``hpsearch.commands``).
Heavy imports happen inside the handlers, so that ``hpsearch --help`` stays quick and works where
only one half is installed."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.commands import print_table, timestamp

if TYPE_CHECKING:
    pass

DEFAULT_API = os.environ.get("HPSEARCH_API_URL", "http://127.0.0.1:8000")


def register(subparsers: Any) -> None:
    """Add the service's subcommands to the ``hpsearch`` parser."""
    serve = subparsers.add_parser(
        "serve",
        help="the API, N local workers and SQLite, in one command",
        description="Start the API and N local worker processes. The database defaults to "
        "SQLite under --data-dir; HPSEARCH_DATABASE_URL selects another (e.g. PostgreSQL). "
        "A local worker that dies is restarted (after 1 s, doubling to 60 s). SIGTERM or "
        "Ctrl-C drains: no new studies or trials, the workers finish or hand back their trials "
        "(HPSEARCH_WORKER_STOP_GRACE, 5 s), then serve exits 0 (at most HPSEARCH_DRAIN_SECONDS, "
        "8 s); a second signal hurries it.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=2, help="local workers (0 for none)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the SQLite database lives (env HPSEARCH_DATA_DIR)",
    )
    serve.add_argument(
        "--allow-no-auth",
        action="store_true",
        default=None,
        help="listen on a non-loopback --host with HPSEARCH_AUTH off (a trusted network only; "
        "env HPSEARCH_ALLOW_NO_AUTH)",
    )
    serve.set_defaults(handler=run_serve)

    migrate = subparsers.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=run_migrate)

    token = subparsers.add_parser(
        "token",
        help="create, list and revoke API tokens (HPSEARCH_AUTH=on)",
        description="Manage API tokens in the service's database (HPSEARCH_DATABASE_URL, or "
        "SQLite under HPSEARCH_DATA_DIR): run it where the API runs, e.g. "
        "`docker compose run --rm api hpsearch token create alice`. A user token launches, stops "
        "and reads studies; a worker token only speaks the worker protocol.",
    )
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create_token = actions.add_parser(
        "create", help="a new token, printed once (only its hash is kept)"
    )
    create_token.add_argument("name", help="who or what holds it, e.g. alice or gpu-box-3")
    create_token.add_argument("--kind", choices=("user", "worker"), default="user")
    create_token.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="a number and a unit: d (days), h (hours), m (minutes) or s (seconds), e.g. 90d, "
        "12h, 30m, 45s (default: never)",
    )
    create_token.set_defaults(handler=run_token_create)
    list_tokens = actions.add_parser("list", help="every token, without its secret")
    list_tokens.add_argument("--json", action="store_true", help="as JSON")
    list_tokens.set_defaults(handler=run_token_list)
    revoke = actions.add_parser("revoke", help="revoke a token by id, or every one with a name")
    revoke.add_argument("token", help="tok_... or a name")
    revoke.set_defaults(handler=run_token_revoke)

    dashboard = subparsers.add_parser(
        "dashboard",
        help="Optuna's own dashboard (optuna-dashboard) over the service's database",
        description="Serve optuna-dashboard over the same storage as the API "
        "(HPSEARCH_DATABASE_URL, or SQLite under --data-dir). It runs on a port of its own: it "
        "only works mounted at /, so it cannot sit under the API's URL.",
    )
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument(
        "--data-dir", type=Path, default=None, help="where the SQLite database lives"
    )
    dashboard.add_argument(
        "--allow-no-auth",
        action="store_true",
        help="listen on a non-loopback --host (optuna-dashboard has no authentication)",
    )
    dashboard.set_defaults(handler=run_dashboard)


# -- serve ---------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    """API + local workers, supervised; drains on SIGTERM or Ctrl-C, then exits 0 (see
    ``service.api.lifecycle``). Workers get an equal share of the cores for their threads."""
    import uvicorn

    from hpsearch.logs import configure_logging
    from service.api.app import create_app
    from service.api.lifecycle import CLOSE_SECONDS, GracefulServer, Shutdown
    from service.context import ServiceContext
    from service.db.session import DatabaseUnreachableError
    from service.supervisor import Supervisor

    settings = _serve_settings(args)
    if isinstance(settings, str):
        print(f"hpsearch serve: {settings}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    instance = serve_instance_id()
    ctx = ServiceContext.from_settings(settings)
    token = _LocalWorkersToken(ctx, instance) if settings.auth and args.workers else None
    if token is not None:
        try:
            token.prepare()
        except DatabaseUnreachableError as exc:  # nothing is started
            print(f"hpsearch serve: {exc}; giving up", file=sys.stderr)
            return 3
    worker_command, worker_env = _worker_launch(args, settings, token)
    supervisor = Supervisor(
        [f"{instance}-local-{i + 1}" for i in range(args.workers)],
        worker_command,
        worker_env,
        settings,
        on_death=functools.partial(_hand_back, ctx),
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=int(CLOSE_SECONDS),
    )
    server: GracefulServer

    def exit_server() -> None:
        server.should_exit = True

    shutdown = Shutdown(ctx, app.state.drain, supervisor, exit_server)
    server = GracefulServer(config, shutdown.signal)
    print(
        f"hpsearch: API on http://{args.host}:{args.port} (docs /docs), "
        f"{args.workers} worker(s), database {settings.url}, auth "
        + ("on" if settings.auth else "off"),
        file=sys.stderr,
        flush=True,
    )
    supervisor.start()
    try:
        server.run()
    finally:
        # Already done when the drain ran; not when the API failed to start.
        supervisor.shutdown(grace=settings.drain_seconds)
        if token is not None:
            token.revoke()
        ctx.engine.dispose()
    return 0


def _serve_settings(args: argparse.Namespace) -> Any:
    """``serve``'s settings, or why they are refused (a line to print; exit 2)."""
    from pydantic import ValidationError

    from service.api.middleware import is_loopback
    from service.config import Settings

    if args.data_dir is not None:
        os.environ["HPSEARCH_DATA_DIR"] = str(args.data_dir)
    try:
        settings = Settings()
    except ValidationError as exc:
        return f"invalid settings: {exc}"
    if (problem := settings.drain_problem()) is not None:
        return f"invalid settings: {problem}"
    if args.allow_no_auth:
        settings = settings.model_copy(update={"allow_no_auth": True})
    if not settings.auth and not settings.allow_no_auth and not is_loopback(args.host):
        return (
            f"refusing to listen on {args.host} without authentication. "
            "Set HPSEARCH_AUTH=on and give clients tokens (`hpsearch token create`), or pass "
            "--allow-no-auth on a trusted network."
        )
    if args.workers < 0:
        return "--workers must be 0 or more"
    return settings


def _worker_launch(
    args: argparse.Namespace, settings: Any, token: _LocalWorkersToken | None
) -> tuple[Any, Any]:
    """How serve starts a local worker: (its command, given its id; its environment)."""
    url = f"http://{args.host}:{args.port}"
    if args.host in ("0.0.0.0", "::"):  # the workers reach a wildcard listener on loopback
        url = f"http://127.0.0.1:{args.port}"
    threads = max(1, (os.cpu_count() or 1) // max(args.workers, 1))

    def worker_command(worker_id: str) -> list[str]:
        return [
            *("-m", "hpsearch", "worker", "--api", url, "--id", worker_id),
            *("--threads", str(threads), "--inter-op-threads", "1"),
        ]

    def worker_env() -> dict[str, str]:
        env = {**os.environ, "HPSEARCH_WORKER_STOP_GRACE": f"{settings.worker_stop_grace:g}"}
        if token is not None:
            env["HPSEARCH_TOKEN"] = token.secret()
        return env

    return worker_command, worker_env


def serve_instance_id() -> str:
    """``<host>-<pid>-<random>``: what this serve process's local workers' ids start with.
    Unique across the serve processes sharing a database: two on one host differ by pid, and
    the random part tells apart two that share a host name and pid (containers, where serve is
    often pid 1, or a pid reused after a restart), so that a restarted serve's workers never
    take over a trial that the previous one's workers held (it is re-run as a lost trial)."""
    import re
    import secrets
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:100] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class _LocalWorkersToken:
    """The worker token of this serve process's local workers: its own (named after the
    instance), so that no other serve process on the database revokes it; revoked at this
    serve's exit. A worker started after the token was revoked (by hand, or by another serve
    that took it for a crashed one's) gets a new one."""

    def __init__(self, ctx: Any, instance: str) -> None:
        self._ctx, self._instance = ctx, instance
        self._id: str | None = None
        self._secret = ""

    def prepare(self) -> None:
        """Wait for the database (migrated) and make the token."""
        from service.db.migrate import upgrade
        from service.db.session import wait_for_database

        wait_for_database(self._ctx.engine, self._ctx.settings.database_wait_seconds)
        upgrade(self._ctx.engine)
        self._create()

    def secret(self) -> str:
        """The token to give a worker being started: a new one if it was revoked."""
        from service.auth import tokens as auth

        if self._id is None or not auth.is_active(self._ctx, self._id):
            self._create()
        return self._secret

    def revoke(self) -> None:
        """At serve's exit; a failure is logged (the token is then revoked as idle later)."""
        from service.auth import tokens as auth

        if self._id is None:
            return
        try:
            auth.revoke_token(self._ctx, self._id)
        except Exception as exc:
            logging.getLogger(__name__).warning(
                "could not revoke the local workers' token: it is revoked once idle",
                extra={"token": self._id, "problem": str(exc)},
            )

    def _create(self) -> None:
        from datetime import timedelta

        from service.auth import tokens as auth

        stale = timedelta(seconds=self._ctx.settings.local_token_stale_seconds)
        row, self._secret = auth.create_local_workers_token(self._ctx, self._instance, stale)
        self._id = row["id"]


def _hand_back(ctx: Any, worker_id: str, returncode: int, stopping: bool) -> None:
    """A local worker died: hand back the trial it held at once rather than leave it to wait
    out its lease: as a crash (a retry used), or, when serve killed it at the end of its drain,
    as a stop (no retry used)."""
    from hpsearch.protocol import ReleaseRequest
    from service.errors import ConflictError, NotFoundError
    from service.supervisor import describe_exit
    from service.trials import reports, workers

    for trial_id, attempt in workers.held_by(ctx, worker_id):
        request = ReleaseRequest(
            worker_id=worker_id,
            attempt=attempt,
            cause="stopping" if stopping else "crashed",
            reason=f"its worker {worker_id} was killed as serve stopped"
            if stopping
            else f"its worker {worker_id} died ({describe_exit(returncode)})",
        )
        try:
            answer = reports.release_trial(ctx, trial_id, request)
        except (ConflictError, NotFoundError):
            continue  # finished, re-let or deleted meanwhile
        logging.getLogger(__name__).info(
            "dead worker's trial handed back",
            extra={"worker": worker_id, "trial_id": trial_id, "state": answer.state},
        )


def run_migrate(args: argparse.Namespace) -> int:
    """``hpsearch migrate``: the one-shot schema step of a deployment."""
    from hpsearch.logs import configure_logging
    from service.config import Settings
    from service.db.migrate import upgrade
    from service.db.session import DatabaseUnreachableError, make_engine, wait_for_database

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    engine = make_engine(settings.url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        wait_for_database(engine, settings.database_wait_seconds)
    except DatabaseUnreachableError as exc:
        print(f"hpsearch migrate: {exc}; giving up", file=sys.stderr)
        return 3
    upgrade(engine)
    print(f"hpsearch: schema up to date at {where}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _database(settings: Any = None) -> Iterator[Any]:
    """The service's database (``settings``, default from the environment), waited for and
    migrated; its engine is disposed afterwards."""
    from service.config import Settings
    from service.context import ServiceContext
    from service.db.migrate import upgrade
    from service.db.session import wait_for_database

    settings = settings or Settings()
    ctx = ServiceContext.from_settings(settings)
    try:
        wait_for_database(ctx.engine, settings.database_wait_seconds)
        upgrade(ctx.engine)
        yield ctx
    finally:
        ctx.engine.dispose()


def run_token_create(args: argparse.Namespace) -> int:
    """Print a new token once, on stdout alone (``TOKEN=$(hpsearch token create ci)``)."""
    from service.auth import tokens as auth

    try:
        expires_in = auth.parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as exc:
        print(f"error: --expires-in: {exc}", file=sys.stderr)
        return 2
    if not 1 <= len(args.name) <= 200:
        print("error: name: 1 to 200 characters", file=sys.stderr)
        return 2
    with _database() as ctx:
        row, secret = auth.create_token(ctx, args.kind, args.name, expires_in)
    print(
        f"{row['kind']} token {row['id']} ({row['name']})"
        + (f", expires {row['expires_at'][:19]}" if row["expires_at"] else "")
        + ". Shown once: keep it now.",
        file=sys.stderr,
    )
    if not ctx.settings.auth:
        print("note: HPSEARCH_AUTH is off here: the API asks for no token", file=sys.stderr)
    print(secret)
    return 0


def run_token_list(args: argparse.Namespace) -> int:
    """A table (or JSON) of tokens, secrets never shown."""
    from service.auth import tokens as auth

    with _database() as ctx:
        rows = auth.list_tokens(ctx)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        f"{len(rows)} tokens",
        ("id", "name", "kind", "starts with", "status", "created", "last used"),
        (
            (
                r["id"],
                r["name"],
                r["kind"],
                r["hint"],
                r["status"],
                timestamp(r["created_at"]),
                timestamp(r["last_used_at"] or "never"),
            )
            for r in rows
        ),
        no_wrap=("id", "starts with"),
    )
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    """Revoke by id or name; the API refuses it from the next request on."""
    from service.auth import tokens as auth
    from service.errors import NotFoundError

    try:
        with _database() as ctx:
            rows = auth.revoke_token(ctx, args.token)
    except NotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"revoked {r['kind']} token {r['id']} ({r['name']})")
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    """``hpsearch dashboard``: optuna-dashboard over the service's storage."""
    try:
        from optuna_dashboard import run_server
    except ModuleNotFoundError:
        print(
            "hpsearch: optuna-dashboard is not installed: pip install 'hpsearch[optuna-dashboard]'",
            file=sys.stderr,
        )
        return 2
    from sqlalchemy.engine import make_url

    from service.api.middleware import is_loopback
    from service.config import Settings
    from service.optuna_bridge import optuna_storage

    if not is_loopback(args.host) and not args.allow_no_auth:
        print(
            f"hpsearch dashboard: refusing to listen on {args.host}: optuna-dashboard has no "
            "authentication and can change studies. Keep it on 127.0.0.1 (reach it through an "
            "SSH tunnel), or pass --allow-no-auth on a trusted network.",
            file=sys.stderr,
        )
        return 2

    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    where = make_url(settings.url).render_as_string(hide_password=True)
    print(
        f"hpsearch: optuna-dashboard on http://{args.host}:{args.port} over {where} "
        "(each study's hpsearch name is in its user attributes)",
        file=sys.stderr,
    )
    run_server(optuna_storage(settings.url), host=args.host, port=args.port)
    return 0
