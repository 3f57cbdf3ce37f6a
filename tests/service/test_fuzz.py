"""The API fuzzed against its own OpenAPI schema by schemathesis (its command line, all of its
phases: the schema's examples, boundary values, random data, and stateful sequences that follow
the responses' ids), on a real uvicorn process with auth on and PostgreSQL. No answer may be a
5xx; every answer's status code must be documented and its body must match the schema.

Bounded for CI: HPSEARCH_FUZZ_EXAMPLES (default 20) examples per operation and phase, a fixed
seed. `make fuzz` runs more, with a random seed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Api, start_secured_api

EXAMPLES = os.environ.get("HPSEARCH_FUZZ_EXAMPLES", "20")
SEED = os.environ.get("HPSEARCH_FUZZ_SEED", "1")
WORKER_PROTOCOL = r"^/api/v1/(workers|trials)/"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," + (
    "response_schema_conformance"
)


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api, drop = start_secured_api("postgresql", tmp_path_factory.mktemp("fuzz"), "fuzzer")
    yield api
    api.stop()
    drop()


def schemathesis(schema: Path, api: Api, token: str, *select: str) -> tuple[int, str]:
    """``schemathesis run``: (test cases generated, its output); fails with the output."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(schema),
        "--url",
        api.url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        EXAMPLES,
        *(["--seed", SEED] if SEED else []),
        "--no-color",
        *select,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-4000:]
    return int(generated.group(1)), output


def test_no_5xx_and_every_answer_matches_the_schema(fuzzed_api: Api, tmp_path: Path) -> None:
    schema = tmp_path / "openapi.json"
    raw = fuzzed_api.http.get("/openapi.json").json()
    schema.write_text(json.dumps(raw))
    operations = sum(len(item) for item in raw["paths"].values())
    assert operations >= 25  # the whole API
    worker = fuzzed_api.create_token("fuzzer-worker", "worker")
    users, _ = schemathesis(
        schema, fuzzed_api, fuzzed_api.token or "", "--exclude-path-regex", WORKER_PROTOCOL
    )
    workers, _ = schemathesis(schema, fuzzed_api, worker, "--include-path-regex", WORKER_PROTOCOL)
    print(f"\nfuzzed {users + workers} requests ({users} user, {workers} worker protocol)")
    assert users >= 20 * (operations - 4) and workers >= 20 * 4
    log = fuzzed_api.log.read_text()
    assert "Traceback" not in log, f"the API logged a traceback: see {fuzzed_api.log}"
