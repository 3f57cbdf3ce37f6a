"""``hpsearch trial`` from the outside: a real process, as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.trainer.notes import NOTES_MODEL_FILE


def hpsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_trial_json_reports_the_notes_model_parameter_counts() -> None:
    out = hpsearch(
        "trial",
        "--dataset",
        "mnist_5k",
        "--params",
        f"@{NOTES_MODEL_FILE}",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["state"] == "complete"
    assert result["parameters"] == {"total": 271_346, "trainable": 268_978, "non_trainable": 2_368}
    assert set(result["epochs"][0]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_trial_shows_a_table_and_progress(tmp_path) -> None:
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"learning_rate": 0.05, "hidden_units": [32]}))
    out = hpsearch(
        "trial", "--dataset", "digits", "--params", f"@{params}", "--epochs", "2", "--threads", "1"
    )
    assert out.returncode == 0, out.stderr
    assert "val_accuracy" in out.stdout and "best val_accuracy" in out.stdout
    assert "2/2" in out.stderr  # the progress bar reached the last epoch


def test_bad_parameters_exit_2_naming_the_parameter_and_range() -> None:
    out = hpsearch("trial", "--dataset", "digits", "--params", '{"dropout": 1.5}')
    assert out.returncode == 2
    assert "dropout" in out.stderr and "[0, 1)" in out.stderr


def test_bad_dataset_file_exits_2_with_its_reason(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.ones((10, 3)), y_train=np.arange(9))
    out = hpsearch("trial", "--dataset", str(path))
    assert out.returncode == 2
    assert "x_train has 10 examples but y_train has 9 labels" in out.stderr


def test_worker_stop_grace_and_id_are_checked_before_the_worker_starts() -> None:
    for option, value in (
        ("--stop-grace", "-1"),
        ("--stop-grace", "soon"),
        ("--stop-grace", "1e9"),
        ("--id", "two words"),
    ):
        out = hpsearch("worker", "--api", "http://127.0.0.1:9", option, value)
        assert out.returncode == 2, out.stderr
        assert f"argument {option}:" in out.stderr and "Traceback" not in out.stderr
    from_env = subprocess.run(
        [sys.executable, "-m", "hpsearch", "worker", "--api", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HPSEARCH_WORKER_STOP_GRACE": "nope"},
    )
    assert from_env.returncode == 2
    assert "argument --stop-grace: not a number of seconds: 'nope'" in from_env.stderr


def test_a_worker_given_no_usable_api_url_says_so_in_one_line() -> None:
    out = hpsearch("worker", "--api", "127.0.0.1:8000")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: --api: '127.0.0.1:8000' is not an http:// URL: give one like "
        "http://127.0.0.1:8000 (--api or HPSEARCH_API_URL)"
    ]
