"""Starting before the database: `hpsearch migrate` and the API wait for it by themselves, log
while they wait, and give up with a clear message and a non-zero exit after the deadline (what a
container deployment relies on, since start order is never guaranteed)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support import (
    DatabaseProxy,
    free_port,
    make_database,
    service_env,
    wait_for,
)

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial


def test_migrate_waits_for_a_database_that_comes_up_late(tmp_path: Path) -> None:
    url, drop = make_database("postgresql", tmp_path)
    proxy = DatabaseProxy(("127.0.0.1", 5432), delay=math.inf)  # down until told
    stderr = tmp_path / "migrate.err"
    try:
        late = make_url(url).set(host="127.0.0.1", port=proxy.port)
        with stderr.open("w") as err:
            migrate = subprocess.Popen(
                [sys.executable, "-m", "hpsearch", "migrate"],
                env=service_env(
                    late.render_as_string(hide_password=False),
                    HPSEARCH_DATABASE_WAIT_SECONDS="60",
                ),
                stderr=err,
                text=True,
            )
        wait_for(lambda: "waiting for the database" in stderr.read_text(), 60, "a waiting log")
        assert migrate.poll() is None, stderr.read_text()
        proxy.up()
        assert migrate.wait(120) == 0, stderr.read_text()
        assert "schema up to date" in stderr.read_text()
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables")}
        assert {"hps_studies", "hps_alembic_version", "studies"} <= tables
    finally:
        proxy.stop()
        drop()


def test_migrate_on_a_database_created_without_a_locale(tmp_path: Path) -> None:
    """initdb in a container without a locale makes SQL_ASCII databases, where psycopg returns
    text as bytes unless the connection asks for UTF-8."""
    url, drop = make_database("postgresql", tmp_path, sql_ascii=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hpsearch", "migrate"],
            env=service_env(url),
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "schema up to date" in done.stderr
    finally:
        drop()


def test_migrate_gives_up_after_its_deadline_without_showing_the_password() -> None:
    url = f"postgresql+psycopg://hpsearch:s3cret@127.0.0.1:{free_port()}/hpsearch"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", "migrate"],
        env=service_env(url, HPSEARCH_DATABASE_WAIT_SECONDS="2"),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert time.monotonic() - started < 30
    assert "did not answer in 2 s" in done.stderr and "giving up" in done.stderr
    assert "127.0.0.1" in done.stderr and "s3cret" not in done.stderr


def test_the_api_exits_non_zero_when_the_database_never_answers(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/hpsearch"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.api.app:app_factory",
            "--port",
            str(free_port()),
        ],
        env=service_env(url, HPSEARCH_DATABASE_WAIT_SECONDS="2"),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "did not answer in 2 s" in done.stderr + done.stdout
    assert "the API does not start" in done.stderr + done.stdout
