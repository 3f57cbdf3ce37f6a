"""``HPSEARCH_DRAIN_SECONDS`` shorter than a stopping worker needs is ``hpsearch serve``'s
problem alone: serve refuses it in one line (exit 2); the commands that never drain (migrate,
token) run as usual (review of issue 16: every Settings() failed, with a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import hpsearch_cli, make_database, service_env

REASON = (
    "hpsearch serve: invalid settings: HPSEARCH_DRAIN_SECONDS (1) must be at least "
    "HPSEARCH_WORKER_STOP_GRACE (5) + 3 s, the time a stopping worker needs to hand its "
    "trial back\n"
)


def test_a_drain_too_short_stops_serve_alone_in_one_line(tmp_path: Path) -> None:
    url, _ = make_database("sqlite", tmp_path)
    env = service_env(url, HPSEARCH_DRAIN_SECONDS="1")
    hpsearch_cli(env, "migrate")
    assert hpsearch_cli(env, "token", "create", "--kind", "user", "alice").startswith("hpsu_")
    serve = subprocess.run(
        [sys.executable, "-m", "hpsearch", "serve", "--workers", "0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (serve.returncode, serve.stderr) == (2, REASON)
