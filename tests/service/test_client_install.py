"""``pip install 'hpsearch[client]'`` gives the ``study`` and ``dataset`` commands, and nothing of
the service or the trainer: a fresh virtual environment, installed offline from the package
cache that ``make install`` filled (no network while tests run), against a real API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, spec

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``hpsearch[client]`` alone; its ``bin`` directory."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    for command in (
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)],
        [
            str(UV),
            "pip",
            "install",
            "--quiet",
            "--offline",
            "--python",
            str(venv / "bin" / "python"),
            f"{REPO}[client]",
        ],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr[-2000:]}"
    return venv / "bin"


def run(bin_dir: Path, api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HPSEARCH_API_URL": api.url}
    return subprocess.run(
        [str(bin_dir / "hpsearch"), *args], capture_output=True, text=True, env=env, check=False
    )


def test_the_client_extra_brings_none_of_the_service_or_trainer_frameworks(
    client_venv: Path,
) -> None:
    for module in ("sqlalchemy", "fastapi", "optuna", "alembic", "tensorflow", "keras", "numpy"):
        done = subprocess.run(
            [str(client_venv / "python"), "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1, f"{module} is importable with hpsearch[client] alone"
        assert f"No module named '{module}'" in done.stderr


def test_study_and_dataset_commands_work_with_the_client_alone(
    client_venv: Path, make_api: Any, tmp_path: Path
) -> None:
    api: Api = make_api("sqlite")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("from-the-client", n_trials=2)))

    created = run(client_venv, api, "study", "create", str(spec_file))
    assert created.returncode == 0, created.stderr
    assert "(from-the-client) created: 2 trials" in created.stdout
    study_id = int(created.stdout.split()[1])

    listed = run(client_venv, api, "study", "list")
    assert listed.returncode == 0, listed.stderr
    assert "from-the-client" in listed.stdout and "0/2" in listed.stdout

    shown = run(client_venv, api, "study", "show", str(study_id))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "from-the-client"

    assert run(client_venv, api, "study", "stop", str(study_id)).returncode == 0
    assert api.http.get(f"/api/v1/studies/{study_id}").json()["status"] == "stopped"

    datasets = run(client_venv, api, "dataset", "list")
    assert datasets.returncode == 0, datasets.stderr
    assert "0 datasets" in datasets.stdout

    missing = run(client_venv, api, "study", "show", "999")
    assert missing.returncode == 5  # not found
    assert "study 999 not found" in missing.stderr


def test_the_service_commands_say_which_extra_brings_them(client_venv: Path) -> None:
    done = subprocess.run(
        [str(client_venv / "hpsearch"), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'hpsearch[service]'" in " ".join(done.stdout.split())
    serve = subprocess.run(
        [str(client_venv / "hpsearch"), "serve"], capture_output=True, text=True, check=False
    )
    assert serve.returncode == 2
    assert "invalid choice: 'serve'" in serve.stderr
