"""What benchmarks 1-4 share (not a benchmark itself): the digits study of
``examples/digits-bn-clip.json`` with chosen trials, epochs, seed and pruner; running a study
through the service; and running a peer in a subprocess of its own.

"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import run_study

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits-bn-clip.json"

PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"type": "none"},
    "median": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "hyperband": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
}


def digits_spec(name: str, n_trials: int, epochs: int, seed: int, pruner: str) -> dict[str, Any]:
    """The example study (model, training, search space) with these trials, epochs, a seeded
    random sampler and one of ``PRUNERS``."""
    spec: dict[str, Any] = json.loads(EXAMPLE.read_text())
    spec["name"] = name
    spec["n_trials"] = n_trials
    spec["training"] = {**spec["training"], "epochs": epochs}
    spec["sampler"] = {"type": "random", "seed": seed}
    spec["pruner"] = dict(PRUNERS[pruner])
    return spec


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def warm_up(api_url: str, n_workers: int) -> None:
    """A study of two 1-epoch digits trials per worker: every worker's trial process has imported
    TensorFlow, loaded the data and trained before anything is timed."""
    spec = digits_spec(unique("warm-up"), 2 * n_workers, 1, 0, "none")
    run_study(api_url, spec, timeout=600)


def run_child(module: str, config: dict[str, Any], timeout: float = 7200.0) -> dict[str, Any]:
    """``python -m MODULE --child CONFIG OUT`` in a fresh interpreter; returns the JSON it wrote
    to OUT. The child's stderr (TensorFlow's chatter) is shown only when it fails."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-child-") as tmp:
        config_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(
            [sys.executable, "-m", module, "--child", str(config_path), str(out_path)],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not out_path.is_file():
            tail = proc.stderr.decode(errors="replace")[-4000:]
            raise RuntimeError(f"{module} child exited with {proc.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(out_path.read_text())
        return result


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result))
