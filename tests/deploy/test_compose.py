"""The docker-compose deployment, for real: both images built from this checkout, PostgreSQL, the
API and two workers in containers; a worker killed mid-trial, the API and the database restarted
mid-study; everything brought down with its volumes.

Runs with `docker compose` or `podman-compose`, whichever works here. Without either it is skipped,
with the reason, unless HPSEARCH_TEST_CONTAINERS=required (set by .ci/run), which makes a missing
engine a failure. The tests share one deployment and run in order; each is one step of the issue's
checklist.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import answers_ready, free_port, wait_for

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits-bn-clip.json"
REQUIRED = os.environ.get("HPSEARCH_TEST_CONTAINERS") == "required"
VOLUMES = ("pgdata", "artifacts", "dataset-cache")


def _works(*command: str) -> bool:
    if shutil.which(command[0]) is None:
        return False
    done = subprocess.run(command, capture_output=True, check=False, timeout=120)
    return done.returncode == 0


def find_engine() -> tuple[list[str], str] | None:
    """(compose command, engine command) of the first engine that answers here."""
    if _works("docker", "info") and _works("docker", "compose", "version"):
        return ["docker", "compose"], "docker"
    if _works("podman", "info") and _works("podman-compose", "version"):
        return ["podman-compose"], "podman"
    return None


@dataclass
class Deployment:
    """One compose project, under a name of its own, on a free port."""

    compose: list[str]
    engine: str
    project: str
    env: dict[str, str]
    env_file: Path
    url: str
    # A user token, made in the API's container once the stack is up (auth is on by default).
    token: str = ""

    def http(self) -> httpx.Client:
        """A client of the published API with the user token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = [*self.compose, "-p", self.project, "-f", str(ROOT / "docker-compose.yml")]
        command += ["--env-file", str(self.env_file), *args]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout[-4000:]}{done.stderr}")
        return done.stdout + done.stderr

    def engine_run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.engine, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"{self.engine} {' '.join(args)}: {done.stderr}"
        return done.stdout

    def containers(self, service: str | None = None, every: bool = False) -> list[str]:
        """Names of this project's containers (of ``service``); running ones unless ``every``."""
        args = ["ps", "--format", "{{.Names}}"]
        args += ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if every:
            args.append("-a")
        return self.engine_run(*args).split()

    def started_at(self, container: str) -> str:
        return self.engine_run("inspect", "--format", "{{.State.StartedAt}}", container).strip()

    def hostname(self, container: str) -> str:
        return self.engine_run("inspect", "--format", "{{.Config.Hostname}}", container).strip()

    def logs_of(self, container: str, tail: int | None = None) -> str:
        args = [self.engine, "logs", *(["--tail", str(tail)] if tail else []), container]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    def logs(self) -> str:
        """The last lines of every container's log, for a failure's message."""
        every = self.containers(every=True)
        return "\n".join(f"--- {c}\n{self.logs_of(c, 40)}" for c in every)[-12000:]

    def psql(self, sql: str) -> str:
        """Ask the deployment's database, from a container on its network (`exec` into a
        running container is refused by this sandbox's runtime)."""
        return self.engine_run(
            "run", "--rm", "--network", f"{self.project}_default",
            "-e", f"PGPASSWORD={self.env['POSTGRES_PASSWORD']}",
            "postgres:15", "psql", "-h", "db", "-U", "hpsearch", "-d", "hpsearch", "-At", "-c", sql,
        ).strip()  # fmt: skip

    def python_in(self, image: str, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.engine, "run", "--rm", "--entrypoint", "python", image, "-c", code],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def remove_everything(self) -> None:
        """After a failed step: whatever `down` leaves behind goes too (a test run must not
        leave a stack running)."""
        self.run("down", "-v", "--remove-orphans", "-t", "5", check=False)
        label = f"label=com.docker.compose.project={self.project}"
        left = self.engine_run("ps", "-aq", "--filter", label).split()
        for args in (
            ["rm", "-f", *left] if left else [],
            ["pod", "rm", "-f", f"pod_{self.project}"] if self.engine == "podman" else [],
            ["volume", "rm", *(f"{self.project}_{v}" for v in VOLUMES)],
            ["network", "rm", f"{self.project}_default"],
        ):
            if args:
                subprocess.run([self.engine, *args], capture_output=True, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    engine = find_engine()
    if engine is None:
        reason = "no container engine here (neither `docker compose` nor `podman-compose` works)"
        if REQUIRED:
            pytest.fail(f"{reason}, and HPSEARCH_TEST_CONTAINERS=required")
        pytest.skip(reason)
    port = free_port()
    settings = {
        "POSTGRES_USER": "hpsearch",
        "POSTGRES_PASSWORD": secrets.token_hex(12),
        "POSTGRES_DB": "hpsearch",
        "API_PORT": str(port),
        "HPSEARCH_VERSION": "test",  # image tags of their own: a user's :latest is left alone
        "HPSEARCH_LEASE_SECONDS": "10",
        "HPSEARCH_WORKERS": "2",
        "HPSEARCH_WORKER_THREADS": "1",  # two workers on a 2-core machine
        "HPSEARCH_LOG_LEVEL": "INFO",
        "HPSEARCH_WORKER_TOKEN": "hpsw_" + secrets.token_urlsafe(32),
    }
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    deployment = Deployment(
        compose=engine[0],
        engine=engine[1],
        project=f"hpstest{secrets.token_hex(3)}",
        env={**os.environ, **settings},
        env_file=env_file,
        url=f"http://127.0.0.1:{port}",
    )
    try:
        yield deployment
    finally:
        if deployment.containers(every=True):  # a step failed before the last one
            deployment.remove_everything()


def launch(deployment: Deployment, name: str, n_trials: int) -> tuple[httpx.Client, int]:
    spec = json.loads(EXAMPLE.read_text())
    spec.update(name=name, n_trials=n_trials, pruner={"type": "none"})
    http = deployment.http()
    created = http.post("/api/v1/studies", json=spec)
    assert created.status_code == 201, created.text
    return http, int(created.json()["id"])


def trials(http: httpx.Client, study_id: int) -> list[dict[str, Any]] | None:
    """The study's trials, or ``None`` while the API (or its database) is away."""
    try:
        answer = http.get(f"/api/v1/studies/{study_id}/trials", params={"limit": 1000})
    except httpx.TransportError:
        return None
    return list(answer.json()["data"]) if answer.status_code == 200 else None


def wait_complete(deployment: Deployment, http: httpx.Client, study_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        try:
            answer = http.get(f"/api/v1/studies/{study_id}")
        except httpx.TransportError:
            return None
        if answer.status_code != 200 or answer.json()["status"] in ("queued", "running"):
            return None
        return dict(answer.json())

    try:
        study: dict[str, Any] = wait_for(finished, 300, f"study {study_id} to finish", 1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from None
    return study


def check_exactly(deployment: Deployment, http: httpx.Client, study_id: int, n: int) -> list[Any]:
    """Every trial ran once and completed; PostgreSQL holds the same results as the API."""
    found = trials(http, study_id)
    assert found is not None
    assert sorted(t["number"] for t in found) == list(range(n)), found
    assert {t["state"] for t in found} == {"complete"}, [t["reason"] for t in found]
    assert all(t["epochs_run"] == 5 for t in found)
    ours = deployment.psql(
        f"SELECT count(*), count(DISTINCT number) FROM hps_trials "
        f"WHERE study_id = {study_id} AND state = 'complete'"
    )
    assert ours == f"{n}|{n}", ours
    optuna = deployment.psql(
        "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
        f"JOIN hps_studies h ON h.optuna_study_id = s.study_id "
        f"WHERE h.id = {study_id} AND t.state = 'COMPLETE'"
    )
    assert optuna == str(n), optuna
    return found


def test_1_images_build_and_the_stack_comes_up_with_two_workers(deployment: Deployment) -> None:
    deployment.run("build", "api", "worker", timeout=1200)
    deployment.run("up", "-d", timeout=300)

    probe = {"Authorization": f"Bearer {deployment.env['HPSEARCH_WORKER_TOKEN']}"}

    try:
        wait_for(
            lambda: answers_ready(deployment.url, probe),
            180,
            "the API to be ready on its published port",
            1,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from None
    # Auth is on by default: nothing answers without a token; an admin makes one in the API's
    # container, as the README says.
    assert httpx.get(f"{deployment.url}/api/v1/studies").status_code == 401
    made = deployment.run("run", "--rm", "-T", "api", "hpsearch", "token", "create", "tester")
    found = re.search(r"hpsu_[A-Za-z0-9_-]{43}", made)  # the engine may print more around it
    assert found, made
    deployment.token = found.group(0)
    assert deployment.http().get("/api/v1/studies").status_code == 200
    assert len(deployment.containers("worker")) == 2
    # The images: non-root, no secret in either.
    for image in ("hpsearch-api:test", "hpsearch-worker:test"):
        config = json.loads(deployment.engine_run("image", "inspect", image))[0]["Config"]
        assert config["User"] == "hpsearch"
        env = " ".join(config.get("Env") or [])
        assert "PASSWORD" not in env and deployment.env["POSTGRES_PASSWORD"] not in env
    # Each image carries its side of the architecture and not the other's.
    api = deployment.python_in("hpsearch-api:test", "import service.api.app, optuna, fastapi")
    assert api.returncode == 0, api.stderr
    for module in ("tensorflow", "trainer"):
        absent = deployment.python_in("hpsearch-api:test", f"import {module}")
        assert f"No module named '{module}'" in absent.stderr, absent.stderr
    worker = deployment.python_in("hpsearch-worker:test", "import trainer.worker, keras")
    assert worker.returncode == 0, worker.stderr
    for module in ("optuna", "fastapi", "service"):
        absent = deployment.python_in("hpsearch-worker:test", f"import {module}")
        assert f"No module named '{module}'" in absent.stderr, absent.stderr


def test_2_and_3_a_worker_killed_mid_trial_loses_and_duplicates_nothing(
    deployment: Deployment,
) -> None:
    http, study_id = launch(deployment, "compose-kill", n_trials=8)

    def mid_trial() -> dict[str, Any] | None:
        running = [t for t in trials(http, study_id) or [] if t["state"] == "running"]
        return next((t for t in running if t["epochs_run"] >= 1), None)

    victim = wait_for(mid_trial, 240, "a trial past its first epoch")
    host = victim["worker_id"].rsplit("-", 2)[0]
    (container,) = [c for c in deployment.containers("worker") if deployment.hostname(c) == host]
    deployment.engine_run("kill", container)  # SIGKILL: no goodbye, the lease just stops

    study = wait_complete(deployment, http, study_id)
    assert study["status"] == "completed", study
    found = check_exactly(deployment, http, study_id, 8)
    rerun = next(t for t in found if t["number"] == victim["number"])
    assert rerun["attempt"] == 2, rerun
    assert rerun["worker_id"] != victim["worker_id"]
    assert "stopped heartbeating" in (rerun["reason"] or ""), rerun
    # The killed container comes back (restart policy, or by hand where the engine has none
    # without systemd) as a new worker for the next step.
    deployment.run("up", "-d", "--scale", "worker=2", timeout=300)
    wait_for(lambda: len(deployment.containers("worker")) == 2, 60, "two workers again")


def test_4_api_and_database_restarts_mid_study_lose_nothing(deployment: Deployment) -> None:
    http, study_id = launch(deployment, "compose-restarts", n_trials=10)

    def completed(at_least: int) -> list[dict[str, Any]] | None:
        done = [t for t in trials(http, study_id) or [] if t["state"] == "complete"]
        return done if len(done) >= at_least else None

    workers = {w: deployment.started_at(w) for w in deployment.containers("worker")}
    before_api = wait_for(lambda: completed(2), 240, "2 complete trials")
    deployment.run("restart", "api", timeout=120)
    before_db = wait_for(lambda: completed(5), 240, "5 complete trials after the API restart")
    deployment.run("restart", "db", timeout=120)

    study = wait_complete(deployment, http, study_id)
    assert study["status"] == "completed", study
    found = {t["number"]: t for t in check_exactly(deployment, http, study_id, 10)}
    for earlier in before_api + before_db:
        kept = found[earlier["number"]]
        assert (kept["value"], kept["finished_at"]) == (earlier["value"], earlier["finished_at"])
    # Both workers lived through both restarts: they waited for the API, nobody restarted them.
    assert {w: deployment.started_at(w) for w in deployment.containers("worker")} == workers
    worker_logs = "".join(deployment.logs_of(w) for w in deployment.containers("worker"))
    assert "waiting for the API" in worker_logs


def test_4b_a_study_on_an_uploaded_dataset_downloads_it_once_per_host(
    deployment: Deployment,
) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.normal(size=(300, 8)), y_train=rng.integers(0, 3, 300))
    http = deployment.http()
    uploaded = http.post("/api/v1/datasets", files={"file": ("blobs.npz", buffer.getvalue())})
    assert uploaded.status_code == 201, uploaded.text
    d = uploaded.json()
    spec = {
        "name": "on-upload",
        "dataset": {"id": d["id"]},
        "model": {"hidden_units": [16]},
        "training": {"epochs": 2},
        "pruner": {"type": "none"},
        "n_trials": 6,
    }
    created = http.post("/api/v1/studies", json=spec)
    assert created.status_code == 201, created.text
    study = wait_complete(deployment, http, int(created.json()["id"]))
    assert study["status"] == "completed", study
    found = trials(http, int(created.json()["id"]))
    assert found is not None and {t["state"] for t in found} == {"complete"}, found
    # Two workers on one host, one shared cache: one download.
    assert http.get(f"/api/v1/datasets/{d['id']}").json()["downloads"] == 1
    for worker in deployment.containers("worker"):  # the workers never see the API's volume
        mounts = json.loads(deployment.engine_run("inspect", "-f", "{{json .Mounts}}", worker))
        assert "/data" not in [m["Destination"] for m in mounts], mounts


def test_5_down_removes_containers_and_volumes(deployment: Deployment) -> None:
    deployment.run("down", "-v", timeout=300)
    assert deployment.containers(every=True) == []
    volumes = deployment.engine_run("volume", "ls", "--format", "{{.Name}}").split()
    for volume in VOLUMES:
        assert f"{deployment.project}_{volume}" not in volumes
