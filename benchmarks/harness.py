"""What every benchmark needs: a real API process on a fresh database, real worker processes,
a study run from its REST call to its completion, and a table of figures against a peer's.

Benchmarks import both halves (like the tests); the product never does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from tests.support import free_port, stop_process, wait_ready

POSTGRES_ADMIN_URL = os.environ.get(
    "HPSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
console = Console(width=140)


def log(message: str) -> None:
    """Progress on stderr, so that the tables on stdout stay readable."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh, empty database: a SQLite file in a temporary folder, or a new PostgreSQL
    database on the local server (dropped afterwards). Yields its SQLAlchemy URL."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'hpsearch.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"hpsearch_bench_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Service:
    """A real uvicorn process serving the API on a fresh port."""

    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    url: str = ""
    process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HPSEARCH_DATABASE_URL": self.database_url,
            "HPSEARCH_LOG_LEVEL": "WARNING",
            **self.env,
        }
        command = [sys.executable, "-m", "uvicorn", "service.api.app:app_factory", "--factory"]
        command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
        if self.processes > 1:
            command += ["--workers", str(self.processes)]
        self.process = subprocess.Popen(command, env=env)
        wait_ready(self.url, self.process, timeout=120, what="the API")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, grace=20)


@dataclass
class Workers:
    """``hpsearch worker`` processes, started and warmed (TensorFlow imported) before a study."""

    api_url: str
    n: int = 1
    threads: int | None = None
    inter_op_threads: int = 1
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Workers:
        env = {**os.environ, "HPSEARCH_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "3"}
        for i in range(self.n):
            command = [sys.executable, "-m", "hpsearch", "worker", "--api", self.api_url]
            command += ["--id", f"bench-{i + 1}-{secrets.token_hex(2)}"]
            if self.threads:
                command += ["--threads", str(self.threads)]
            command += ["--inter-op-threads", str(self.inter_op_threads)]
            self.processes.append(subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class StudyRun:
    """One study, timed from its REST call to its completion, with its trials."""

    study: dict[str, Any]
    trials: list[dict[str, Any]]
    seconds: float

    @property
    def best(self) -> float | None:
        best = self.study.get("best_trial")
        return None if best is None else float(best["value"])

    @property
    def epochs(self) -> int:
        return sum(int(t["epochs_run"]) for t in self.trials)


def fetch_trials(http: httpx.Client, study_id: int) -> list[dict[str, Any]]:
    """Every trial of a study, page by page."""
    trials: list[dict[str, Any]] = []
    while True:
        page = (
            http.get(
                f"/api/v1/studies/{study_id}/trials",
                params={"offset": len(trials), "limit": 500},
            )
            .raise_for_status()
            .json()
        )
        trials += page["data"]
        if len(trials) >= page["count"] or not page["data"]:
            return trials


def post_study(http: httpx.Client, spec: dict[str, Any]) -> int:
    """Launch a study; its id (a refusal raises with the API's answer)."""
    response = http.post("/api/v1/studies", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"study refused: {response.status_code} {response.text}")
    return int(response.json()["id"])


def run_study(
    api_url: str, spec: dict[str, Any], timeout: float = 3600.0, poll: float = 0.2
) -> StudyRun:
    """POST the spec, poll until the study ends; its trials fetched after the clock stopped."""
    with httpx.Client(base_url=api_url, timeout=60) as http:
        started = time.perf_counter()
        study_id = post_study(http, spec)
        deadline = time.monotonic() + timeout
        while True:
            study = http.get(f"/api/v1/studies/{study_id}").json()
            if study["status"] not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {spec['name']} not done after {timeout:g} s")
            time.sleep(poll)
        seconds = time.perf_counter() - started
        trials = fetch_trials(http, study_id)
    if study["status"] != "completed":
        raise RuntimeError(f"study {spec['name']} ended {study['status']}: {study}")
    return StudyRun(study, trials, seconds)


def cpu_seconds(pids: Sequence[int], children: bool = True) -> dict[int, float]:
    """User + system CPU time of each of these processes (and their children), from /proc;
    subtract two readings with ``cpu_used`` (processes that appear in between count from 0)."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *(process.children(recursive=True) if children else [])]:
                times = p.cpu_times()
                out[p.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two ``cpu_seconds`` readings."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def postgres_pids() -> list[int]:
    """The local PostgreSQL server's processes (its backends do the database's work)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1..99) of ``values``."""
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


@dataclass
class Row:
    """One line of a benchmark's table: our figure, the peer's, their ratio, the target."""

    figure: str
    ours: float | str | None
    peer: float | str | None = None
    target: str = ""
    met: bool | None = None
    ratio: float | None = None
    digits: int = 2

    def cells(self) -> list[str]:
        def fmt(v: float | str | None) -> str:
            if v is None:
                return ""
            return v if isinstance(v, str) else f"{v:,.{self.digits}f}"

        ratio = self.ratio
        if (
            ratio is None
            and isinstance(self.ours, float | int)
            and isinstance(self.peer, float | int)
            and self.peer
        ):
            ratio = float(self.ours) / float(self.peer)
        verdict = "" if self.met is None else ("met" if self.met else "MISSED")
        return [
            self.figure,
            fmt(self.ours),
            fmt(self.peer),
            "" if ratio is None else f"{ratio:.3f}",
            self.target,
            verdict,
        ]


def print_table(title: str, peer: str, rows: list[Row], notes: Sequence[str] = ()) -> None:
    """One benchmark's table on stdout."""
    table = Table(title=title, title_justify="left", caption="\n".join(notes) or None)
    table.add_column("figure")
    table.add_column("hpsearch", justify="right")
    table.add_column(peer, justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("")
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)
