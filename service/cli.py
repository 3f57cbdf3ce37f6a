"""The service's commands: ``serve``, ``migrate``, ``token``, ``study``, ``dataset`` and
``dashboard``.
Heavy imports happen inside the handlers, so that ``hpsearch --help`` stays quick and works where
only one half is installed. ``study`` and ``dataset`` commands talk to a running API over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

DEFAULT_API = os.environ.get("HPSEARCH_API_URL", "http://127.0.0.1:8000")


def register(subparsers: Any) -> None:
    """Add the service's subcommands to the ``hpsearch`` parser."""
    serve = subparsers.add_parser(
        "serve",
        help="the API, N local workers and SQLite, in one command",
        description="Start the API and N local worker processes. The database defaults to "
        "SQLite under --data-dir; HPSEARCH_DATABASE_URL selects another (e.g. PostgreSQL).",
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
        "--expires-in", metavar="DURATION", help="e.g. 90d, 12h (default: never)"
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

    study = subparsers.add_parser("study", help="launch and manage studies through the API")
    study.add_argument("--api", default=DEFAULT_API, help="the API's URL (env HPSEARCH_API_URL)")
    actions = study.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="launch a study from a JSON spec file")
    create.add_argument("spec", type=Path)
    create.add_argument("--wait", action="store_true", help="show progress until it ends")
    create.set_defaults(handler=run_study_create)
    actions.add_parser("list", help="studies, newest first").set_defaults(handler=run_study_list)
    for name, helptext in (
        ("show", "one study"),
        ("stop", "stop a study"),
        ("resume", "resume a stopped study"),
        ("wait", "show progress until a study ends"),
    ):
        p = actions.add_parser(name, help=helptext)
        p.add_argument("study_id", type=int)
        p.set_defaults(handler=run_study_action)

    dataset = subparsers.add_parser("dataset", help="upload and manage datasets through the API")
    dataset.add_argument("--api", default=DEFAULT_API, help="the API's URL (env HPSEARCH_API_URL)")
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)
    upload = actions.add_parser(
        "upload",
        help="upload an .npz or .csv file; prints its id",
        description="Upload a dataset. An .npz holds x_train and y_train (and optionally x_val, "
        "y_val, x_test, y_test); a .csv holds a label column and numeric or text features "
        "(text columns are one-hot encoded). Use the printed id in a study spec: "
        '"dataset": {"id": "ds_..."}.',
    )
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="default: the file name without its suffix")
    upload.add_argument("--label-column", help="csv only (default: label)")
    upload.add_argument("--format", choices=("npz", "csv"), help="default: from the suffix")
    upload.set_defaults(handler=run_dataset_upload)
    actions.add_parser("list", help="uploaded datasets").set_defaults(handler=run_dataset_list)
    for name, helptext in (("show", "one dataset, as JSON"), ("delete", "delete a dataset")):
        p = actions.add_parser(name, help=helptext)
        p.add_argument("dataset_id")
        p.set_defaults(handler=run_dataset_action)


# -- serve ---------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    """API + local workers. Workers get an equal share of the cores for their threads."""
    import uvicorn

    from hpsearch.logs import configure_logging
    from service.api.app import create_app
    from service.api.middleware import is_loopback
    from service.config import Settings

    if args.data_dir is not None:
        os.environ["HPSEARCH_DATA_DIR"] = str(args.data_dir)
    settings = Settings()
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
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}"
    if args.host in ("0.0.0.0", "::"):  # the workers reach a wildcard listener on loopback
        url = f"http://127.0.0.1:{args.port}"
    worker_env = dict(os.environ)
    if settings.auth and args.workers:
        worker_env["HPSEARCH_TOKEN"] = _local_worker_token(settings)
    threads = max(1, (os.cpu_count() or 1) // max(args.workers, 1))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpsearch",
                "worker",
                "--api",
                url,
                "--threads",
                str(threads),
                "--inter-op-threads",
                "1",
                "--id",
                f"local-{i + 1}",
            ],
            env=worker_env,
            # Safe here: serve has started no thread yet (the API's start after the workers).
            preexec_fn=_terminate_with_parent,  # noqa: PLW1509
        )
        for i in range(args.workers)
    ]
    print(
        f"hpsearch: API on http://{args.host}:{args.port} (docs /docs), "
        f"{args.workers} worker(s), database {settings.url}, auth "
        + ("on" if settings.auth else "off"),
        file=sys.stderr,
        flush=True,
    )

    def _exit(signum: int, _frame: Any) -> None:
        # uvicorn re-raises SIGTERM after its graceful shutdown; without a handler of ours the
        # process would die there, before stopping its workers.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for w in workers:
            try:
                w.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                w.kill()
    return 0


def _local_worker_token(settings: Any) -> str:
    """A worker token for ``serve``'s own workers, made afresh at every start (the previous
    one is revoked): its secret never leaves this process and its children."""
    from service import auth

    with _database(settings) as ctx:
        return auth.replace_token(ctx, "worker", "hpsearch serve: local workers")


def _terminate_with_parent() -> None:
    """In a local worker, before exec: SIGTERM when ``serve`` dies, even by ``kill -9`` (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


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
    """A rich table of ``rows``; the ``no_wrap`` columns never wrap their cells."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, no_wrap=header in no_wrap)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


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
                r["created_at"][:19],
                (r["last_used_at"] or "never")[:19],
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


# -- study ---------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, timeout: float = 30.0) -> Any:
    import httpx

    token = os.environ.get("HPSEARCH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.api.rstrip("/"), headers=headers, timeout=timeout)


def _fail(response: Any) -> int:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    print(f"error: HTTP {response.status_code}: {body.get('detail')}", file=sys.stderr)
    for e in body.get("errors", []):
        print(f"  {e['field']}: {e['reason']}", file=sys.stderr)
    return 2 if response.status_code in (404, 409, 422) else 1


def run_study_create(args: argparse.Namespace) -> int:
    """POST a spec file; with --wait, show progress until the study ends."""
    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.spec}: {exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        response = client.post("/api/v1/studies", json=spec)
        if response.status_code != 201:
            return _fail(response)
        study = response.json()
        print(f"study {study['id']} ({study['name']}) created: {study['n_trials']} trials")
        if args.wait:
            return _wait(client, study["id"])
    return 0


def run_study_list(args: argparse.Namespace) -> int:
    """A table of studies."""
    with _client(args) as client:
        response = client.get("/api/v1/studies", params={"limit": 100})
        if response.status_code != 200:
            return _fail(response)
        page = response.json()
    _print_table(
        f"{page['count']} studies",
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
                s["created_at"][:19],
            )
            for s in page["data"]
        ),
    )
    return 0


def run_study_action(args: argparse.Namespace) -> int:
    """show / stop / resume / wait."""
    with _client(args) as client:
        if args.action == "wait":
            return _wait(client, args.study_id)
        if args.action == "show":
            response = client.get(f"/api/v1/studies/{args.study_id}")
        else:
            response = client.post(f"/api/v1/studies/{args.study_id}/{args.action}")
        if response.status_code != 200:
            return _fail(response)
        print(json.dumps(response.json(), indent=2))
    return 0


def _wait(client: Any, study_id: int) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ) as progress:
        task = progress.add_task(f"study {study_id}", total=None, info="")
        while True:
            response = client.get(f"/api/v1/studies/{study_id}")
            if response.status_code != 200:
                return _fail(response)
            s = response.json()
            c, best = s["trial_counts"], s["best_trial"]
            info = (
                f"{s['status']}, running {c['running']}, pruned {c['pruned']}, "
                f"failed {c['failed'] + c['diverged'] + c['timed_out']}"
                + ("" if best is None else f", best {best['value']:.4f}")
            )
            progress.update(task, total=s["n_trials"], completed=s["finished"], info=info)
            if s["status"] not in ("queued", "running"):
                break
            time.sleep(1.0)
    print(
        f"study {study_id}: {s['status']}"
        + (f" ({s['status_reason']})" if s["status_reason"] else "")
    )
    return 0 if s["status"] == "completed" else 1


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
    import httpx
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
    with _client(args, timeout=600.0) as client:
        listing = client.get("/api/v1/datasets", params={"limit": 1})
        if listing.status_code != 200:
            return _fail(listing)
        limit = listing.json()["max_upload_bytes"]
        if size > limit:
            print(
                f"error: {path} is {size:,} bytes; the service accepts at most {limit:,} "
                "(HPSEARCH_MAX_UPLOAD_BYTES on the service)",
                file=sys.stderr,
            )
            return 2
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
            try:
                response = client.post(
                    "/api/v1/datasets", files={"file": (path.name, reader)}, data=data
                )
            except httpx.TransportError as exc:
                print(f"error: the upload failed: {exc}", file=sys.stderr)
                return 1
    if response.status_code not in (200, 201):
        return _fail(response)
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
    with _client(args) as client:
        response = client.get("/api/v1/datasets", params={"limit": 1000})
        if response.status_code != 200:
            return _fail(response)
        page = response.json()
    _print_table(
        f"{page['count']} datasets",
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
                d["created_at"][:19],
            )
            for d in page["data"]
        ),
    )
    return 0


def run_dataset_action(args: argparse.Namespace) -> int:
    """show / delete."""
    with _client(args) as client:
        path = f"/api/v1/datasets/{args.dataset_id}"
        response = client.get(path) if args.action == "show" else client.delete(path)
        if response.status_code not in (200, 204):
            return _fail(response)
    if args.action == "show":
        print(json.dumps(response.json(), indent=2))
    else:
        print(f"dataset {args.dataset_id} deleted")
    return 0
