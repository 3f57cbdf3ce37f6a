"""The service's commands: ``serve``, ``migrate``, ``token``, ``study``, ``dataset`` and
``dashboard``.
Heavy imports happen inside the handlers, so that ``hpsearch --help`` stays quick and works where
only one half is installed. ``study`` and ``dataset`` commands talk to a running API over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.results import TrialState

if TYPE_CHECKING:
    import httpx

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

    _register_client_commands(subparsers)


# Exit codes of the ``study`` and ``dataset`` commands, one per kind of failure (3 and 4 are
# also what ``hpsearch worker`` exits with when the API is unreachable or refuses its token).
EXIT_OK = 0
EXIT_FAILED = 1  # anything else: a 5xx, an unexpected answer, a study that ended unsuccessfully
EXIT_INVALID = 2  # invalid input: a bad argument or file, a 422 (or 413) from the API
EXIT_UNREACHABLE = 3  # no answer: connection refused, host not found, timeout, broken connection
EXIT_TOKEN_REFUSED = 4  # 401 (no valid token) or 403 (a token of the wrong kind)
EXIT_NOT_FOUND = 5  # 404: no such study or dataset
EXIT_CONFLICT = 6  # 409: the resource's state forbids it (a taken name, a study already ended)
EXIT_INTERRUPTED = 130  # Ctrl-C

_EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 any other failure (a server error, a study that ended stopped or "
    "failed); 2 invalid input (a bad argument or file, or the API's 422); 3 the API cannot be "
    "reached; 4 the API refused the token (401/403); 5 not found (404); 6 a conflict with the "
    "resource's state (409); 130 interrupted (Ctrl-C). Errors are one line on stderr; --debug "
    "adds the traceback."
)
# A trial runs, then ends in one of the trainer's states.
TRIAL_STATES = ("running", *(state.value for state in TrialState))


def _register_client_commands(subparsers: Any) -> None:
    """``study`` and ``dataset``: commands that talk to a running API."""
    # --api, --timeout and --debug work before or after the action (``hpsearch study --api URL
    # list`` and ``hpsearch study list --api URL``): on the action they default to nothing, so
    # that they never overwrite the group's value.
    common = argparse.ArgumentParser(add_help=False)
    _client_options(common, argparse.SUPPRESS)

    study = subparsers.add_parser(
        "study",
        help="launch and manage studies through the API",
        description="Launch, watch and manage studies on a running API (--api). With "
        "HPSEARCH_AUTH on, set HPSEARCH_TOKEN to a user token.",
        epilog=_EXIT_CODES_HELP,
    )
    _client_options(study, None)
    actions = study.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, helptext: str, handler: Any, **kw: Any) -> argparse.ArgumentParser:
        """An action of the group being built (``actions``), with the common options."""
        p: argparse.ArgumentParser = actions.add_parser(
            name, help=helptext, parents=[common], epilog=_EXIT_CODES_HELP, **kw
        )
        p.set_defaults(handler=_reporting_api_errors(handler))
        return p

    create = action("create", "launch a study from a JSON spec file", run_study_create)
    create.add_argument("spec", type=Path)
    create.add_argument("--wait", action="store_true", help="show progress until it ends")
    action("list", "studies, newest first", run_study_list)
    for name, helptext in (
        ("show", "one study, as JSON"),
        ("stop", "stop a study"),
        ("resume", "resume a stopped study"),
        ("wait", "show progress until a study ends (exit 0 when it completed, 1 otherwise)"),
    ):
        action(name, helptext, run_study_action).add_argument("study_id", type=int)
    trials = action(
        "trials",
        "a table of a study's trials",
        run_study_trials,
        description="A study's trials, by number: state, objective value, each searched "
        "parameter, epochs run and duration (every page fetched).",
    )
    trials.add_argument("study_id", type=int)
    trials.add_argument("--state", choices=TRIAL_STATES, help="only trials in this state")
    trials.add_argument("--json", action="store_true", help="the trials as the API gives them")
    best = action(
        "best",
        "the best trial: value and parameters",
        run_study_best,
        description="The study's best completed trial. --json prints its parameters alone, "
        "ready to reuse: `hpsearch study best 3 --json > best.json; hpsearch trial --params "
        "@best.json --dataset digits`.",
    )
    best.add_argument("study_id", type=int)
    best.add_argument("--json", action="store_true", help="the parameters as a JSON object")
    delete = action(
        "delete",
        "delete a study and its trials",
        run_study_delete,
        description="Delete a study, its trials and Optuna's copy of it, after asking (a "
        "running study's workers drop its trials). --yes deletes without asking, as a script "
        "needs; without it, a 'y' is read from stdin.",
    )
    delete.add_argument("study_id", type=int)
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")

    dataset = subparsers.add_parser(
        "dataset",
        help="upload and manage datasets through the API",
        description="Upload and manage datasets on a running API (--api).",
        epilog=_EXIT_CODES_HELP,
    )
    _client_options(dataset, None)
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)
    upload = action(
        "upload",
        "upload an .npz or .csv file; prints its id",
        run_dataset_upload,
        description="Upload a dataset. An .npz holds x_train and y_train (and optionally x_val, "
        "y_val, x_test, y_test); a .csv holds a label column and numeric or text features "
        "(text columns are one-hot encoded). Use the printed id in a study spec: "
        '"dataset": {"id": "ds_..."}.',
    )
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="default: the file name without its suffix")
    upload.add_argument("--label-column", help="csv only (default: label)")
    upload.add_argument("--format", choices=("npz", "csv"), help="default: from the suffix")
    action("list", "uploaded datasets", run_dataset_list)
    for name, helptext in (("show", "one dataset, as JSON"), ("delete", "delete a dataset")):
        action(name, helptext, run_dataset_action).add_argument("dataset_id")


def _client_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--api, --timeout and --debug; ``default`` None gives each its real default."""
    unset = default is not None
    parser.add_argument(
        "--api",
        default=default if unset else DEFAULT_API,
        help=f"the API's URL (env HPSEARCH_API_URL; default {DEFAULT_API})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default if unset else None,
        help="how long to wait for each answer (default 30; an upload 600)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default if unset else False,
        help="print the traceback of an error, not only its one line",
    )


# -- serve ---------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    """API + local workers, supervised; drains on SIGTERM or Ctrl-C, then exits 0 (see
    ``service.api.lifecycle``). Workers get an equal share of the cores for their threads."""
    import uvicorn
    from pydantic import ValidationError

    from hpsearch.logs import configure_logging
    from service.api.app import create_app
    from service.api.lifecycle import CLOSE_SECONDS, GracefulServer, Shutdown
    from service.api.middleware import is_loopback
    from service.config import Settings
    from service.context import ServiceContext
    from service.db.session import DatabaseUnreachableError
    from service.supervisor import Supervisor

    if args.data_dir is not None:
        os.environ["HPSEARCH_DATA_DIR"] = str(args.data_dir)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"hpsearch serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if (problem := settings.drain_problem()) is not None:
        print(f"hpsearch serve: invalid settings: {problem}", file=sys.stderr)
        return 2
    if args.allow_no_auth:
        settings = settings.model_copy(update={"allow_no_auth": True})
    if not settings.auth and not settings.allow_no_auth and not is_loopback(args.host):
        print(
            f"hpsearch serve: refusing to listen on {args.host} without authentication. "
            "Set HPSEARCH_AUTH=on and give clients tokens (`hpsearch token create`), or pass "
            "--allow-no-auth on a trusted network.",
            file=sys.stderr,
        )
        return 2
    if args.workers < 0:
        print("hpsearch serve: --workers must be 0 or more", file=sys.stderr)
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
        from service import auth

        if self._id is None or not auth.is_active(self._ctx, self._id):
            self._create()
        return self._secret

    def revoke(self) -> None:
        """At serve's exit; a failure is logged (the token is then revoked as idle later)."""
        from service import auth

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

        from service import auth

        stale = timedelta(seconds=self._ctx.settings.local_token_stale_seconds)
        row, self._secret = auth.create_local_workers_token(self._ctx, self._instance, stale)
        self._id = row["id"]


def _hand_back(ctx: Any, worker_id: str, returncode: int, stopping: bool) -> None:
    """A local worker died: hand back the trial it held at once rather than leave it to wait
    out its lease: as a crash (a retry used), or, when serve killed it at the end of its drain,
    as a stop (no retry used)."""
    from hpsearch.protocol import ReleaseRequest
    from service import scheduling, workers
    from service.errors import ConflictError, NotFoundError
    from service.supervisor import describe_exit

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
            answer = scheduling.release_trial(ctx, trial_id, request)
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


def _print_table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[str]], no_wrap: Sequence[str] = ()
) -> None:
    """A rich table of ``rows`` that never cuts a cell: on a narrow terminal long values wrap at
    spaces or fold onto the next line rather than end in an ellipsis, and the cells lose their
    padding first. The ``no_wrap`` columns (ids) keep each cell on one line."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    for header in headers:
        table.add_column(header, no_wrap=header in no_wrap, overflow="fold")
    for row in rows:
        table.add_row(*row)
    unbounded = console.options.update_width(1_000_000)
    if console.measure(table, options=unbounded).maximum > console.width:
        table.padding = (0, 0)  # a narrow terminal: the room goes to the values
    console.print(table)


def run_token_create(args: argparse.Namespace) -> int:
    """Print a new token once, on stdout alone (``TOKEN=$(hpsearch token create ci)``)."""
    from service import auth

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
    from service import auth

    with _database() as ctx:
        rows = auth.list_tokens(ctx)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(
        f"{len(rows)} tokens",
        ("id", "name", "kind", "starts with", "status", "created", "last used"),
        (
            (
                r["id"],
                r["name"],
                r["kind"],
                r["hint"],
                r["status"],
                _timestamp(r["created_at"]),
                _timestamp(r["last_used_at"] or "never"),
            )
            for r in rows
        ),
        no_wrap=("id", "starts with"),
    )
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    """Revoke by id or name; the API refuses it from the next request on."""
    from service import auth
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


# -- the API client ------------------------------------------------------------------------------
# Every way a request to the API can fail becomes an ApiError in ApiClient, and every command
# reports it the same way in _reporting_api_errors: one line (and one per field at fault), the
# exit code of its kind, a traceback only with --debug.

_PAGE_SIZE = 500  # rows per request when a command fetches a whole list
_NO_SERVER_HINT = "start it with `hpsearch serve`, or pass --api / set HPSEARCH_API_URL"
_TOKEN_HINT = "set HPSEARCH_TOKEN to a user token (`hpsearch token create NAME` where the API runs)"


class ApiError(Exception):
    """A request the API refused or could not answer: the line to show, the indented lines
    under it (one per field at fault), the command's exit code, and the HTTP status and fields
    at fault when the API answered."""

    def __init__(
        self,
        message: str,
        exit_code: int,
        details: Sequence[str] = (),
        status: int | None = None,
        fields: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.details = tuple(details)
        self.status = status
        self.fields = tuple(fields)


class ApiClient:
    """The hpsearch API over HTTP, as the ``study`` and ``dataset`` commands use it.

    ``request`` returns only the answers a command expects; anything else (no connection, a
    timeout, a refused token, a 4xx or 5xx) raises :class:`ApiError` naming the URL and what to
    do. Not thread-safe (one httpx client)."""

    def __init__(self, api_url: str, token: str | None, timeout: float) -> None:
        import httpx

        self.url = _checked_api_url(api_url)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token_sent = bool(token)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        subject: str | None = None,
        expect: Sequence[int] = (200,),
        **kwargs: Any,
    ) -> httpx.Response:
        """``method path``; the answer when its status is in ``expect``, else ApiError.
        ``subject`` names what the request is about in the error ("study 3": "study 3 not found
        at ...")."""
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.url, self.timeout) from exc
        if response.status_code not in expect:
            raise _status_error(response, self.url, subject, self._token_sent)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request``, and the answer's JSON body."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"error: the answer from {self.url} to {method} {path} is not JSON "
                f"({response.headers.get('content-type', 'no content type')}): is --api the "
                "hpsearch API?",
                EXIT_FAILED,
            ) from None

    def fetch_all(
        self, path: str, params: dict[str, Any] | None = None, subject: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Every row of a paginated list, page after page: (rows, the count the API gave)."""
        rows: list[dict[str, Any]] = []
        limit: dict[str, int] = {"limit": _PAGE_SIZE}
        while True:
            query = {**(params or {}), "offset": len(rows), **limit}
            try:
                page = self.json("GET", path, params=query, subject=subject)
            except ApiError as exc:
                if not (limit and exc.status == 422 and "limit" in exc.fields):
                    raise
                limit = {}  # the API allows fewer rows a page (HPSEARCH_MAX_PAGE_SIZE): its own
                continue
            rows += page["data"]
            if not page["data"] or len(rows) >= page["count"]:
                return rows, int(page["count"])


def _checked_api_url(api_url: str) -> str:
    """``api_url`` without its trailing slash, refused (exit 2) unless it is an http(s) URL."""
    import httpx

    hint = "give one like http://127.0.0.1:8000 (--api or HPSEARCH_API_URL)"
    try:
        url = httpx.URL(api_url)
    except httpx.InvalidURL as exc:
        raise ApiError(
            f"error: --api: {api_url!r} is not a URL ({exc}): {hint}", EXIT_INVALID
        ) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ApiError(f"error: --api: {api_url!r} is not an http:// URL: {hint}", EXIT_INVALID)
    return api_url.rstrip("/")


def _transport_error(exc: httpx.TransportError, url: str, timeout: float) -> ApiError:
    """No answer: why (refused, unknown host, timeout, broken connection), and what to do."""
    import socket

    import httpx

    if isinstance(exc, httpx.TimeoutException):
        what = "no connection" if isinstance(exc, httpx.ConnectTimeout) else "no answer"
        return ApiError(
            f"error: cannot reach the hpsearch API at {url} ({what} within {timeout:g} s): "
            "check that it runs and answers there, or pass --timeout SECONDS",
            EXIT_UNREACHABLE,
        )
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        reason, hint = "connection refused", _NO_SERVER_HINT
    elif isinstance(cause, socket.gaierror):
        reason = f"host name not found: {cause.strerror}"
        hint = "check the host in --api / HPSEARCH_API_URL"
    elif isinstance(exc, httpx.ConnectError):
        reason, hint = str(exc) or type(exc).__name__, _NO_SERVER_HINT
    else:  # connected, then the connection broke or the answer was not HTTP
        reason = f"the connection broke: {str(exc).rstrip('.') or type(exc).__name__}"
        hint = "check that --api / HPSEARCH_API_URL is the hpsearch API, and that it runs"
    return ApiError(
        f"error: cannot reach the hpsearch API at {url} ({reason}): {hint}", EXIT_UNREACHABLE
    )


def _status_error(
    response: httpx.Response, url: str, subject: str | None, token_sent: bool
) -> ApiError:
    """An answer the command did not expect, as one line naming the URL, and its exit code."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):  # not the API's error shape: keep its text short
        body = {"detail": " ".join(response.text.split())[:200] or response.reason_phrase}
    detail = str(body.get("detail") or response.reason_phrase)
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    request = f"{response.request.method} {response.request.url.path}"
    if status in (401, 403):
        if status == 401 and not token_sent:
            line = f"error: the API at {url} needs a token (401): {_TOKEN_HINT}"
        else:
            line = f"error: the API at {url} refused the token ({status}: {detail}): {_TOKEN_HINT}"
        return ApiError(line, EXIT_TOKEN_REFUSED, status=status)
    if status == 404:
        line = (
            f"error: {request} not found at {url}: {detail}"
            if subject is None
            else f"error: {subject} not found at {url}"
        )
        return ApiError(line, EXIT_NOT_FOUND, status=status)
    if status in (413, 422):
        lines = [f"{e.get('field')}: {e.get('reason')}" for e in errors]
        return ApiError(
            f"error: the API at {url} refused {subject or request} ({status}): "
            + ("fix these and try again:" if lines else detail),
            EXIT_INVALID,
            lines,
            status=status,
            fields=[str(e.get("field")) for e in errors],
        )
    if status == 409:
        line = f"error: the API at {url} refused: {detail} (409 conflict)"
        return ApiError(line, EXIT_CONFLICT, status=status)
    if status >= 500:
        line = (
            f"error: the API at {url} failed on {request} ({status} {response.reason_phrase}): "
            f"{detail}"
        )
        return ApiError(line, EXIT_FAILED, status=status)
    line = (
        f"error: the API at {url} answered {status} {response.reason_phrase} to {request}: {detail}"
    )
    return ApiError(line, EXIT_FAILED, status=status)


def _api(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    """The client for this command's --api, --timeout and HPSEARCH_TOKEN."""
    return ApiClient(args.api, os.environ.get("HPSEARCH_TOKEN") or None, args.timeout or timeout)


def _reporting_api_errors(handler: Any) -> Any:
    """``handler``, with its ApiErrors reported as one line each (and the traceback with
    --debug) and turned into their exit codes."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
        except ApiError as exc:
            if getattr(args, "debug", False):
                traceback.print_exc()
            print(exc.message, file=sys.stderr)
            for line in exc.details:
                print(f"  {line}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        return code

    return run


# -- study ---------------------------------------------------------------------------------------


def run_study_create(args: argparse.Namespace) -> int:
    """POST a spec file; with --wait, show progress until the study ends."""
    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.spec}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with _api(args) as api:
        study = api.json(
            "POST",
            "/api/v1/studies",
            json=spec,
            expect=(201,),
            subject=f"the study spec in {args.spec}",
        )
        print(f"study {study['id']} ({study['name']}) created: {study['n_trials']} trials")
        if args.wait:
            return _wait(api, study["id"])
    return EXIT_OK


def run_study_list(args: argparse.Namespace) -> int:
    """A table of studies."""
    with _api(args) as api:
        studies, count = api.fetch_all("/api/v1/studies")
    _print_table(
        f"{count} studies",
        ("id", "name", "status", "finished", "pruned", "failed", "best", "created"),
        (
            (
                str(s["id"]),
                s["name"],
                s["status"],
                f"{s['finished']}/{s['n_trials']}",
                str(s["trial_counts"]["pruned"]),
                str(sum(s["trial_counts"][k] for k in ("failed", "diverged", "timed_out"))),
                "" if s["best_trial"] is None else f"{s['best_trial']['value']:.4f}",
                _timestamp(s["created_at"]),
            )
            for s in studies
        ),
        no_wrap=("id",),
    )
    return EXIT_OK


def run_study_action(args: argparse.Namespace) -> int:
    """show / stop / resume / wait."""
    subject = f"study {args.study_id}"
    with _api(args) as api:
        if args.action == "wait":
            return _wait(api, args.study_id)
        if args.action == "show":
            study = api.json("GET", f"/api/v1/studies/{args.study_id}", subject=subject)
        else:
            path = f"/api/v1/studies/{args.study_id}/{args.action}"
            study = api.json("POST", path, subject=subject)
        print(json.dumps(study, indent=2))
    return EXIT_OK


def run_study_trials(args: argparse.Namespace) -> int:
    """A table (or JSON) of a study's trials, every page fetched."""
    subject = f"study {args.study_id}"
    with _api(args) as api:
        study = api.json("GET", f"/api/v1/studies/{args.study_id}", subject=subject)
        trials, count = api.fetch_all(
            f"/api/v1/studies/{args.study_id}/trials",
            {"state": args.state} if args.state else {},
            subject=subject,
        )
    if args.json:
        print(json.dumps(trials, indent=2))
        return EXIT_OK
    searched: list[str] = study["searched"]
    _print_table(
        f"study {study['id']} ({study['name']}): {count} "
        + (f"{args.state} trials" if args.state else f"trials of {study['n_trials']}"),
        ("#", "state", study["objective"]["metric"], *searched, "epochs", "duration"),
        (
            (
                str(t["number"]),
                t["state"],
                "" if t["value"] is None else f"{t['value']:.4f}",
                *(_param_text(t["params"].get(name)) for name in searched),
                str(t["epochs_run"]),
                "" if t["duration_seconds"] is None else f"{t['duration_seconds']:.1f} s",
            )
            for t in trials
        ),
        no_wrap=("#",),
    )
    return EXIT_OK


def run_study_best(args: argparse.Namespace) -> int:
    """The best completed trial's value and parameters (--json: the parameters alone)."""
    with _api(args) as api:
        study = api.json(
            "GET", f"/api/v1/studies/{args.study_id}", subject=f"study {args.study_id}"
        )
    best = study["best_trial"]
    if best is None:
        print(
            f"error: study {study['id']} ({study['name']}) has no completed trial yet "
            f"({study['status']}, {study['finished']} of {study['n_trials']} finished)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps(best["params"], indent=2, sort_keys=True))
        return EXIT_OK
    objective = study["objective"]
    print(
        f"study {study['id']} ({study['name']}): best trial {best['number']}, "
        f"{objective['metric']} {best['value']:.4f} ({objective['direction']})"
    )
    searched = [name for name in study["searched"] if name in best["params"]]
    fixed = sorted(name for name in best["params"] if name not in searched)
    for title, names in (("searched", searched), ("fixed", fixed)):
        if names:
            print(f"{title}:")
            for name in names:
                print(f"  {name}: {_param_text(best['params'][name])}")
    return EXIT_OK


def run_study_delete(args: argparse.Namespace) -> int:
    """Delete a study after a 'y' on stdin, or at once with --yes."""
    subject = f"study {args.study_id}"
    with _api(args) as api:
        study = api.json("GET", f"/api/v1/studies/{args.study_id}", subject=subject)
        if not args.yes:
            sys.stderr.write(
                f"delete study {study['id']} ({study['name']}, {study['status']}) and its "
                f"{sum(study['trial_counts'].values())} trials? [y/N] "
            )
            sys.stderr.flush()
            answer = sys.stdin.readline().strip().lower()
            if not sys.stdin.isatty():  # the answer was not echoed: end the prompt's line
                sys.stderr.write("\n")
            if answer not in ("y", "yes"):
                print(
                    f"study {study['id']} not deleted"
                    + ("" if answer else " (no answer: pass --yes to delete without asking)"),
                    file=sys.stderr,
                )
                return EXIT_FAILED
        api.request("DELETE", f"/api/v1/studies/{args.study_id}", subject=subject, expect=(204,))
    print(f"study {study['id']} ({study['name']}) deleted")
    return EXIT_OK


def _param_text(value: Any) -> str:
    """A parameter's value, short: floats to 4 significant digits, lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _timestamp(value: str) -> str:
    """An API timestamp (ISO 8601) as ``2024-05-01 12:34:56``: it wraps at the space."""
    return value[:19].replace("T", " ")


def _wait(api: ApiClient, study_id: int) -> int:
    """A progress bar with the trial counts and an ETA until the study ends; exit 0 when it
    completed, 1 when it ended otherwise, 130 on Ctrl-C (the study goes on)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    path, subject = f"/api/v1/studies/{study_id}", f"study {study_id}"
    eta = _Eta()
    try:
        s = api.json("GET", path, subject=subject)  # before the bar: no bar for a missing study
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            # On a narrow terminal the counts wrap under each other; the bar keeps its numbers.
            TextColumn("{task.fields[info]}", table_column=Column(overflow="fold")),
        ) as progress:
            task = progress.add_task(subject, total=s["n_trials"], info="", eta="")
            while True:
                c, best = s["trial_counts"], s["best_trial"]
                info = (
                    f"{s['status']}, running {c['running']}, pruned {c['pruned']}, "
                    f"failed {c['failed'] + c['diverged'] + c['timed_out']}"
                    + ("" if best is None else f", best {best['value']:.4f}")
                )
                progress.update(
                    task,
                    total=s["n_trials"],
                    completed=s["finished"],
                    info=info,
                    eta=eta.update(s["status"], s["finished"], s["n_trials"]),
                )
                if s["status"] not in ("queued", "running"):
                    break
                time.sleep(1.0)
                s = api.json("GET", path, subject=subject)
    except KeyboardInterrupt:
        print(
            f"interrupted: study {study_id} goes on (`hpsearch study wait {study_id}` to watch "
            f"it again, `hpsearch study stop {study_id}` to stop it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"study {study_id}: {s['status']}"
        + (f" ({s['status_reason']})" if s["status_reason"] else "")
    )
    return EXIT_OK if s["status"] == "completed" else EXIT_FAILED


class _Eta:
    """Time left, from the trials finished per second since this command first saw the study
    running (a queued study's wait is not counted; a study watched mid-run starts afresh)."""

    def __init__(self) -> None:
        self._since: tuple[float, int] | None = None

    def update(self, status: str, finished: int, total: int) -> str:
        """The ETA as ``eta 0:01:23`` (``eta -:--:--`` until a trial has finished)."""
        if status not in ("queued", "running"):
            return "eta 0:00:00" if finished >= total else ""
        now = time.monotonic()
        if status == "queued" or self._since is None:
            self._since = (now, finished)
            return "eta -:--:--"
        started, finished_then = self._since
        done = finished - finished_then
        if done <= 0:
            return "eta -:--:--"
        left = (total - finished) * (now - started) / done
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return f"eta {hours}:{minutes:02d}:{seconds:02d}"


# -- datasets ------------------------------------------------------------------------------------


class _ProgressReader:
    """A file whose reads advance a progress bar (httpx reads the upload through it)."""

    def __init__(self, f: Any, advance: Any) -> None:
        self._f, self._advance = f, advance

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self._f.read(size)
        self._advance(len(chunk))
        return chunk

    # httpx sizes the body from these (a Content-Length lets the API refuse a file that is too
    # large before it is sent) and rewinds the file before sending it.
    def fileno(self) -> int:
        fileno: int = self._f.fileno()
        return fileno

    def seek(self, offset: int, whence: int = 0) -> int:
        position: int = self._f.seek(offset, whence)
        return position

    def tell(self) -> int:
        position: int = self._f.tell()
        return position


def run_dataset_upload(args: argparse.Namespace) -> int:
    """Upload a file with a progress bar; print the dataset's id and summary."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    path: Path = args.file
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    data = {
        k: v
        for k, v in (
            ("name", args.name),
            ("label_column", args.label_column),
            ("format", args.format),
        )
        if v
    }
    with _api(args, timeout=600.0) as api:
        limit = api.json("GET", "/api/v1/datasets", params={"limit": 1})["max_upload_bytes"]
        if size > limit:
            print(
                f"error: {path} is {size:,} bytes; the service accepts at most {limit:,} "
                "(HPSEARCH_MAX_UPLOAD_BYTES on the service)",
                file=sys.stderr,
            )
            return EXIT_INVALID
        with (
            path.open("rb") as f,
            Progress(
                TextColumn(f"uploading {path.name}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("upload", total=size)
            reader = _ProgressReader(f, lambda n: progress.advance(task, n))
            response = api.request(
                "POST",
                "/api/v1/datasets",
                files={"file": (path.name, reader)},
                data=data,
                expect=(200, 201),
                subject=f"the upload of {path}",
            )
    d = response.json()
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in d["shapes"].items())
    print(
        f"dataset {d['id']} ({d['name']}): {shapes}; {d['classes']} classes; "
        f"{d['size_bytes']:,} bytes; sha256 {d['sha256']}"
        + ("" if response.status_code == 201 else " (already uploaded)")
    )
    return 0


def run_dataset_list(args: argparse.Namespace) -> int:
    """A table of uploaded datasets."""
    with _api(args) as api:
        datasets, count = api.fetch_all("/api/v1/datasets")
    _print_table(
        f"{count} datasets",
        ("id", "name", "format", "x_train", "classes", "bytes", "downloads", "created"),
        (
            (
                d["id"],
                d["name"],
                d["format"],
                "x".join(map(str, d["shapes"]["x_train"])),
                str(d["classes"]),
                f"{d['size_bytes']:,}",
                str(d["downloads"]),
                _timestamp(d["created_at"]),
            )
            for d in datasets
        ),
        no_wrap=("id",),
    )
    return EXIT_OK


def run_dataset_action(args: argparse.Namespace) -> int:
    """show / delete."""
    path, subject = f"/api/v1/datasets/{args.dataset_id}", f"dataset {args.dataset_id}"
    with _api(args) as api:
        if args.action == "show":
            print(json.dumps(api.json("GET", path, subject=subject), indent=2))
        else:
            api.request("DELETE", path, subject=subject, expect=(204,))
            print(f"dataset {args.dataset_id} deleted")
    return EXIT_OK
