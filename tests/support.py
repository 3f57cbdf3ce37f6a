"""What the tests share: fresh databases, real API and worker processes started and waited
for, polling with a deadline, the tests' small study spec, and direct reads of a database. The
one place that picks ports and waits for servers (the benchmarks use it too); the fixtures that
hand these out are in each tier's conftest.

PostgreSQL is expected at 127.0.0.1:5432 (user postgres, trust auth): the tests that need it fail,
never skip, when it is unreachable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

POSTGRES_ADMIN = os.environ.get(
    "HPSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


BACKENDS = ["sqlite", "postgresql"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ready(url: str, headers: dict[str, str] | None = None) -> bool:
    """Whether the API at ``url`` answers ``/readyz`` with 200 (no answer: not yet)."""
    try:
        return httpx.get(f"{url}/readyz", headers=headers, timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def wait_ready(
    url: str,
    process: subprocess.Popen[Any] | None = None,
    output: Any = None,
    timeout: float = 60,
    what: str = "the API",
    headers: dict[str, str] | None = None,
) -> None:
    """Wait until the API at ``url`` is ready; fail at once, with the end of its ``output()``,
    if its ``process`` exits first."""

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            tail = output()[-3000:] if output is not None else ""
            raise AssertionError(f"{what} exited with {process.returncode}: {tail}")
        return answers_ready(url, headers)

    wait_for(ready, timeout, f"{what} at {url} to be ready", interval=0.2)


def stop_process(process: subprocess.Popen[Any], grace: float = 15) -> None:
    """SIGTERM, then ``kill -9`` after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_database(backend: str, tmp: Path, sql_ascii: bool = False) -> tuple[str, Any]:
    """A fresh, empty database: (SQLAlchemy URL, a function that drops it). ``sql_ascii``: a
    PostgreSQL database created without a locale, as initdb makes it in a bare container."""
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'hpsearch.db'}", lambda: None
    name = f"hps_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as conn:
            extra = " ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            conn.execute(f'CREATE DATABASE "{name}"{extra if sql_ascii else ""}')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is expected at {POSTGRES_ADMIN} and is unreachable: {exc}")

    def drop() -> None:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", drop


class DatabaseProxy:
    """A TCP port in front of ``target`` (the database) that can be late and can fail: it
    refuses connections for its first ``delay`` seconds (a database still starting), and
    ``cut(seconds)`` drops every open connection and refuses new ones for that long (a database
    restarting under load)."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.port = free_port()
        self.target = target
        self.stopped = threading.Event()
        self._down_until = time.monotonic() + delay
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def up(self) -> None:
        """Forward from now on (a late database that has started)."""
        self._down_until = 0.0

    def cut(self, seconds: float) -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def _serve(self) -> None:
        listener: socket.socket | None = None
        while not self.stopped.is_set():
            if time.monotonic() < self._down_until:  # down: nothing listens, connects are refused
                if listener is not None:
                    listener.close()
                    listener = None
                time.sleep(0.05)
                continue
            if listener is None:
                listener = socket.create_server(("127.0.0.1", self.port))
                listener.settimeout(0.05)
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            if time.monotonic() < self._down_until:  # cut while we were accepting
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        if listener is not None:
            listener.close()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.difference_update((source, sink))

    def stop(self) -> None:
        self.stopped.set()


@dataclass
class Api:
    """A real uvicorn process serving the API on its own port."""

    url: str
    database_url: str
    env: dict[str, str]
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    # With HPSEARCH_AUTH=on: a user token, sent by ``http``.
    token: str | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def create_token(self, name: str, kind: str = "user", *extra: str) -> str:
        """``hpsearch token create`` on this API's database: the new token."""
        return hpsearch_cli(self.env, "token", "create", name, "--kind", kind, *extra).strip()

    @property
    def data_dir(self) -> Path:
        """The API's data directory (its artifacts live under it)."""
        return Path(self.env["HPSEARCH_DATA_DIR"])

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "service.api.app:app_factory",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        wait_ready(self.url, self.process, self.log.read_text, what="the API", headers=headers)

    def kill(self) -> None:
        """``kill -9``: no shutdown of any kind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def hpsearch_cli(env: dict[str, str], *args: str) -> str:
    """Run ``hpsearch ARGS`` with ``env``; its stdout (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"hpsearch {' '.join(args)}: {done.stderr}"
    return done.stdout


def service_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The API's environment; its data directory (artifacts) is a fresh temporary one unless
    ``HPSEARCH_DATA_DIR`` is given."""
    env = dict(os.environ)
    env.update(
        {
            "HPSEARCH_DATA_DIR": tempfile.mkdtemp(prefix="hps-data-"),
            "HPSEARCH_DATABASE_URL": database_url,
            "HPSEARCH_LEASE_SECONDS": "4",
            "HPSEARCH_REAPER_SECONDS": "0.5",
            "HPSEARCH_IDLE_RETRY_SECONDS": "0.3",
            "HPSEARCH_MAX_TRIALS": "500",
            "HPSEARCH_LOG_FORMAT": "text",
        }
    )
    env.update(overrides)
    return env


def start_api(
    backend: str, tmp: Path, log: Path | None = None, token_name: str | None = None, **env: str
) -> tuple[Api, Any]:
    """A real API process on a fresh database of ``backend``, its files under ``tmp``, with the
    e2e tier's environment and ``env`` over it: (the API, a function that drops its database).
    With ``HPSEARCH_AUTH="on"``, a user token (``token_name``, default ``admin``) is made
    before it starts (``api.token``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    url, drop = make_database(backend, tmp)
    full_env = service_env(url, **{"HPSEARCH_DATA_DIR": str(tmp / "data"), **env})
    token = None
    if env.get("HPSEARCH_AUTH") == "on":
        token = hpsearch_cli(full_env, "token", "create", token_name or "admin").strip()
    port = free_port()
    server = Api(
        f"http://127.0.0.1:{port}", url, full_env, log or tmp / "api.log", port, token=token
    )
    server.start()
    return server, drop


def start_secured_api(backend: str, tmp: Path, name: str = "admin") -> tuple[Api, Any]:
    """An API with HPSEARCH_AUTH=on on a fresh database, and a user token ``name`` made before
    it started (``api.token``): (the API, a function that drops its database)."""
    return start_api(backend, tmp, token_name=name, HPSEARCH_AUTH="on")


def wait_until_done(api: Api, study_id: int, timeout: float) -> dict[str, Any]:
    """Poll a study until it is no longer queued or running; return it."""

    def done() -> dict[str, Any] | None:
        response = api.http.get(f"/api/v1/studies/{study_id}")
        if response.status_code == 503:  # the database is away for a moment: ask again
            return None
        study: dict[str, Any] = response.json()
        return study if study["status"] not in ("queued", "running") else None

    result: dict[str, Any] = wait_for(done, timeout, f"study {study_id} to finish", interval=1)
    return result


@dataclass
class WorkerProcess:
    """A real ``hpsearch worker`` process."""

    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """``kill -9`` of the worker and its trial process (a machine lost, in effect)."""
        import psutil

        parent = psutil.Process(self.process.pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
        self.process.wait()

    def terminate(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()


def hidden_from(path: Path, command: list[str]) -> list[str]:
    """``command``, run in a mount namespace of its own where ``path`` is an empty tmpfs."""
    script = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(path),
        *command,
    ]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A small, fast study spec (synthetic data, small MLP); override any field."""
    base: dict[str, Any] = {
        "name": name,
        "dataset": {
            "name": "synthetic",
            "n_samples": 400,
            "n_features": 10,
            "n_informative": 5,
            "n_classes": 3,
        },
        "model": {"hidden_units": [16], "batch_norm": "before"},
        "training": {"epochs": 3, "batch_size": 32, "optimizer": "sgd"},
        "sampler": {"type": "random", "seed": 1},
        "pruner": {"type": "none"},
        "n_trials": 4,
    }
    base.update(overrides)
    return base


def query(api: Api, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` on the API's database, read directly (not through the API)."""
    if api.database_url.startswith("sqlite"):
        with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql)]
    dsn = api.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[call-overload]
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def execute(api: Api, sql: str) -> None:
    """Run ``sql`` on the API's database directly."""
    if api.database_url.startswith("sqlite"):
        with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
        return
    dsn = api.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[call-overload]
