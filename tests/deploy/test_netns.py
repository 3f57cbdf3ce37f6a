"""The many-machines deployment without containers: PostgreSQL, the API and two workers each in a
network namespace of its own, on separate addresses joined by a bridge (veth pairs), as on four
machines. One worker is cut off from the network mid-trial: its lease expires, the other worker
re-runs the trial, and the study completes with exactly its trials. When the cut-off worker is
reconnected, it learns that its trial went elsewhere and drops it.

Needs root, iproute2 and PostgreSQL's server binaries. Without them it is skipped with the reason,
unless HPSEARCH_TEST_NETNS=required (set by .ci/run), which makes their absence a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import hpsearch_cli, spec, wait_for, wait_ready

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial

REQUIRED = os.environ.get("HPSEARCH_TEST_NETNS") == "required"
HOSTS = ("db", "api", "w1", "w2")
N_TRIALS = 6


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        return "PostgreSQL's server binaries are not in /usr/lib/postgresql/*/bin"
    probe = f"hpsprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Network:
    """A bridge in the test's namespace (10.231.N.1) and one namespace per host behind it."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str = field(default_factory=lambda: f"10.231.{secrets.randbelow(250) + 1}")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)  # folders to remove at the end

    @property
    def bridge(self) -> str:
        return f"hpsbr{self.tag}"

    def ns(self, host: str) -> str:
        return f"hps{self.tag}-{host}"

    def veth(self, host: str) -> str:
        return f"hpsv{self.tag}{HOSTS.index(host)}"  # the host's cable, bridge side

    def address(self, host: str) -> str:
        return f"{self.subnet}.{10 + HOSTS.index(host)}"

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for host in HOSTS:
            ns, veth = self.ns(host), self.veth(host)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, host: str) -> None:
        """Pull the host's cable: no packet in or out, no reset, connections just hang."""
        sh("ip", "link", "set", self.veth(host), "down")

    def reconnect(self, host: str) -> None:
        sh("ip", "link", "set", self.veth(host), "up")

    def start(self, host: str, args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # a group: runuser's postgres goes with it
            )
        self.processes.append(process)
        return process

    def down(self) -> None:
        """Stop every process (SIGINT: PostgreSQL's fast shutdown, Python's KeyboardInterrupt;
        then SIGKILL), then remove the cables, the namespaces and the bridge. A process left in
        a namespace would keep it, and its cable, alive."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for host in HOSTS:
            subprocess.run(["ip", "link", "del", self.veth(host)], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def network() -> Iterator[Network]:
    missing = _missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"{missing}, and HPSEARCH_TEST_NETNS=required")
        pytest.skip(missing)
    net = Network()
    try:
        net.up()
        yield net
    finally:
        net.down()


def start_postgres(net: Network, tmp_path: Path) -> str:
    """A PostgreSQL server of its own on the db host's address; returns its URL."""
    bin_dir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    # Not under pytest's folder, which only root may enter.
    data = Path(tempfile.mkdtemp(prefix="hps-netns-pg-"))
    net.scratch.append(data)
    shutil.chown(data, "postgres", "postgres")
    initdb = [
        "runuser", "-u", "postgres", "--", f"{bin_dir}/initdb", "-D", str(data / "pg"),
        "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
    ]  # fmt: skip
    subprocess.run(initdb, check=True, capture_output=True)
    with (data / "pg" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {net.subnet}.0/24 trust\n")
    server = [
        "runuser", "-u", "postgres", "--", f"{bin_dir}/postgres", "-D", str(data / "pg"),
        "-c", f"listen_addresses={net.address('db')}", "-c", f"unix_socket_directories={data}",
        "-c", "fsync=off",
    ]  # fmt: skip
    net.start("db", server, tmp_path / "postgres.log")
    admin = f"postgresql://postgres@{net.address('db')}:5432/postgres"

    def accepts() -> bool:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                conn.execute("CREATE DATABASE hpsearch")
            return True
        except psycopg.OperationalError:
            return False

    wait_for(accepts, 60, "PostgreSQL on the db host")
    return f"postgresql+psycopg://postgres@{net.address('db')}:5432/hpsearch"


def test_a_worker_cut_off_mid_trial_is_recovered_by_lease(network: Network, tmp_path: Path) -> None:
    net = network
    database_url = start_postgres(net, tmp_path)
    api_url = f"http://{net.address('api')}:8000"
    api = [
        sys.executable, "-m", "uvicorn", "service.api.app:app_factory", "--factory",
        "--host", net.address("api"), "--port", "8000", "--log-level", "warning",
    ]  # fmt: skip
    # Machines on a network: auth on, one worker token for the workers, a user token for us.
    worker_token = "hpsw_" + secrets.token_urlsafe(32)
    user_token = hpsearch_cli(
        {**os.environ, "HPSEARCH_DATABASE_URL": database_url}, "token", "create", "netns"
    ).strip()
    net.start(
        "api",
        api,
        tmp_path / "api.log",
        HPSEARCH_AUTH="on",
        HPSEARCH_WORKER_TOKEN=worker_token,
        HPSEARCH_DATABASE_URL=database_url,
        HPSEARCH_LEASE_SECONDS="5",
        HPSEARCH_REAPER_SECONDS="0.5",
        HPSEARCH_LOG_FORMAT="text",
    )
    http = httpx.Client(
        base_url=api_url, timeout=10, headers={"Authorization": f"Bearer {user_token}"}
    )

    wait_ready(api_url, timeout=60, headers={"Authorization": f"Bearer {user_token}"})
    for host in ("w1", "w2"):
        worker = [
            sys.executable, "-m", "hpsearch", "worker", "--api", api_url, "--id", host,
            "--threads", "1", "--inter-op-threads", "1", "--connect-deadline", "300",
        ]  # fmt: skip
        net.start(
            host,
            worker,
            tmp_path / f"{host}.log",
            HPSEARCH_LOG_FORMAT="text",
            HPSEARCH_TOKEN=worker_token,
        )
    body = spec(
        "netns",
        n_trials=N_TRIALS,
        dataset={"name": "synthetic", "n_samples": 3000, "n_features": 20, "n_classes": 3},
        training={"epochs": 6, "batch_size": 32, "optimizer": "sgd"},
    )
    created = http.post("/api/v1/studies", json=body)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]

    def trials() -> list[dict[str, Any]]:
        answer = http.get(f"/api/v1/studies/{study_id}/trials", params={"limit": 100})
        return list(answer.json()["data"])

    def w1_mid_trial() -> dict[str, Any] | None:
        return next(
            (
                t
                for t in trials()
                if t["state"] == "running" and t["worker_id"] == "w1" and t["epochs_run"] >= 1
            ),
            None,
        )

    victim = wait_for(w1_mid_trial, 180, "w1 past the first epoch of a trial")
    w1_before = {t["number"] for t in trials() if t["worker_id"] == "w1"} - {victim["number"]}
    net.cut("w1")
    cut_at = time.monotonic()

    def finished() -> dict[str, Any] | None:
        study = http.get(f"/api/v1/studies/{study_id}").json()
        return study if study["status"] not in ("queued", "running") else None

    study = wait_for(finished, 300, "the study to finish without w1")
    assert study["status"] == "completed", study
    found = trials()
    assert sorted(t["number"] for t in found) == list(range(N_TRIALS))
    assert {t["state"] for t in found} == {"complete"}, [t["reason"] for t in found]
    rerun = next(t for t in found if t["number"] == victim["number"])
    assert (rerun["worker_id"], rerun["attempt"]) == ("w2", 2), rerun
    assert "worker w1 stopped heartbeating" in rerun["reason"]
    assert rerun["params"] == victim["params"]
    # w1 finished nothing after the cut: its trials are those it had before.
    assert {t["number"] for t in found if t["worker_id"] == "w1"} == w1_before
    assert time.monotonic() - cut_at >= 5  # the lease had to run out first

    # Back on the network, w1 hears that its trial went elsewhere and drops it; the study's
    # results stay as they are.
    net.reconnect("w1")
    w1_log = tmp_path / "w1.log"
    wait_for(
        lambda: "lease lost" in w1_log.read_text() or "result not taken" in w1_log.read_text(),
        120,
        "w1 to learn that its trial was re-run",
    )
    after = {t["number"]: (t["state"], t["value"], t["worker_id"]) for t in trials()}
    assert after == {t["number"]: (t["state"], t["value"], t["worker_id"]) for t in found}
