"""The fixtures of the end-to-end tier: a fresh database per test module (a SQLite file or a
new PostgreSQL database), real uvicorn API processes, real worker processes (tests/support.py
starts them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    BACKENDS,
    Api,
    WorkerProcess,
    hidden_from,
    start_api,
)


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API process on a fresh database, for the whole module, on each backend."""
    server, drop = start_api(request.param, tmp_path_factory.mktemp(request.param))
    yield server
    server.stop()
    drop()


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    """Start an API on a fresh database of the given backend: ``make_api("postgresql")``."""
    made: list[tuple[Api, Any]] = []

    def make(backend: str, **env: str) -> Api:
        """With ``HPSEARCH_AUTH="on"``, a user token ``admin`` is made first (``api.token``)."""
        server, drop = start_api(
            backend, tmp_path / backend, tmp_path / f"api-{backend}.log", **env
        )
        made.append((server, drop))
        return server

    yield make
    for server, drop in made:
        server.stop()
        drop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Start workers with ``workers(api_url, n)``; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        api_url: str, n: int = 1, prefix: str = "w", hide: Path | None = None, **extra: str
    ) -> list[WorkerProcess]:
        """``hide``: a directory the workers must not see (an empty file system is mounted over
        it in a mount namespace of their own), as on another machine."""
        out = []
        for _ in range(n):
            worker_id = f"{prefix}{len(started) + 1}"
            log = tmp_path / f"{worker_id}.log"
            args = [
                sys.executable,
                "-m",
                "hpsearch",
                "worker",
                "--api",
                api_url,
                "--id",
                worker_id,
                "--threads",
                "1",
                "--inter-op-threads",
                "1",
                "--connect-deadline",
                "120",
            ]
            for key, value in extra.items():
                args += [f"--{key.replace('_', '-')}", value]
            if "dataset_cache" not in extra:  # a cache of its own, as on its own machine
                args += ["--dataset-cache", str(tmp_path / f"{worker_id}-cache")]
            if hide is not None:
                args = hidden_from(hide, args)
            with log.open("wb") as f:
                process = subprocess.Popen(
                    args,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HPSEARCH_LOG_FORMAT": "text"},
                )
            wp = WorkerProcess(process, log)
            started.append(wp)
            out.append(wp)
        return out

    yield start
    for w in started:
        w.stop()
