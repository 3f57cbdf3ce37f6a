"""The API fuzzed against its own OpenAPI schema by schemathesis (its command line, all of its
phases: the schema's examples, boundary values, random data, and stateful sequences that follow
the responses' ids), on a real uvicorn process with auth on and PostgreSQL. No answer may be a
5xx; every answer's status code must be documented and its body must match the schema.

Then what schemathesis does not send (it keeps to the schema's lengths and to small numbers):
hostile values in every field of every JSON body the schema declares, each body otherwise valid
(a real study spec, the protocol's bodies for a trial a worker holds): strings of 10,000
characters and a NUL, 1e12, 1e308, -0.0, integers past 2**63, nesting 40 levels deep.

Bounded for CI: HPSEARCH_FUZZ_EXAMPLES (default 20) examples per operation and phase, a fixed
seed, and the hostile values that each field's type takes. `make fuzz` runs more, with a random
seed, and every hostile value in every field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Api, spec, start_secured_api

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


# -- hostile values in every field -----------------------------------------------------------

NESTED = "<nested>"  # replaced, in the body's text, by 40 levels of arrays
HOSTILE_STRINGS: list[Any] = ["x" * 10_000, "é" * 201, "a\x00b"]
HOSTILE_NUMBERS: list[Any] = [1e12, 1e308, -1e308, -0.0, 2**63, 2**64 + 1, -(2**63) - 1, 10**400]
THOROUGH = int(EXAMPLES) > 20  # `make fuzz`: every value in every field, whatever its type


def hostile_values(schema: dict[str, Any]) -> list[Any]:
    """What to put in a field of this (resolved) schema: what its type takes, and nesting."""
    kinds = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
    values: list[Any] = [NESTED]
    if THOROUGH or "string" in kinds or not kinds - {None}:
        values += HOSTILE_STRINGS
    if THOROUGH or kinds & {"integer", "number"} or not kinds - {None}:
        values += HOSTILE_NUMBERS
    return values


def resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def fields_of(
    schema: dict[str, Any], document: dict[str, Any], prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every property path the schema declares (through references and unions), each with
    its schema."""
    schema = resolve(schema, document)
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for member in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        out.update(fields_of(member, document, prefix))
    for name, member in schema.get("properties", {}).items():
        out[(*prefix, name)] = resolve(member, document)
        if len(prefix) < 4:
            out.update(fields_of(member, document, (*prefix, name)))
    return out


def leaves(body: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path into a body's objects (a list is one field)."""
    if not isinstance(body, dict):
        return [prefix] if prefix else []
    out = [prefix] if prefix else []
    for key, value in body.items():
        out += leaves(value, (*prefix, key))
    return out


def with_value(body: dict[str, Any], path: tuple[str, ...], value: Any) -> str:
    """``body`` with ``value`` at ``path`` (objects made on the way), as JSON text."""
    changed = json.loads(json.dumps(body))
    where = changed
    for key in path[:-1]:
        if not isinstance(where.get(key), dict):
            where[key] = {}
        where = where[key]
    where[path[-1]] = value
    return json.dumps(changed).replace(json.dumps(NESTED), "[" * 40 + "1" + "]" * 40)


def valid_bodies(api: Api, worker: httpx.Client) -> dict[str, dict[str, Any]]:
    """An otherwise valid body for each JSON operation: a study spec that searches every kind
    of range, and the worker protocol's bodies for a trial the fuzzing worker holds."""
    study = spec(
        "hostile-base",
        n_trials=3,
        timeout_seconds=3600,
        trial_timeout_seconds=600,
        search_space={
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "hidden_units": {"type": "int", "low": 8, "high": 64, "step": 8},
            "activation": {"type": "categorical", "choices": ["relu", "elu"]},
        },
        objective={"metric": "val_loss", "direction": "minimize"},
    )
    study["model"] = {"batch_norm": "before"}
    # Studies the schema fuzzer left running are stopped: the worker's trial must be this one's.
    for left in api.http.get("/api/v1/studies", params={"limit": 1000}).json()["data"]:
        if left["status"] in ("queued", "running"):
            api.http.post(f"/api/v1/studies/{left['id']}/stop")
    created = api.http.post("/api/v1/studies", json=study)
    assert created.status_code == 201, created.text
    asked = worker.post("/api/v1/workers/ask", json={"worker_id": "hostile", "hostname": "box"})
    assert asked.status_code == 200, asked.text
    trial = asked.json()
    lease = {"worker_id": "hostile", "attempt": trial["attempt"]}
    metrics = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.5}
    result = {
        "state": "complete",
        "reason": "done",
        "epochs": [{"epoch": 1, "seconds": 0.1, **metrics}],
        "epochs_run": 1,
        "best_value": 1.1,
        "final_value": 1.1,
        "seconds": 0.1,
        "parameters": {"total": 10, "trainable": 10, "non_trainable": 0},
    }
    on_trial = f"/api/v1/trials/{trial['trial_id']}"
    # In this order: those that keep the lease first, those that end it last.
    return {
        "/api/v1/studies": {**study, "name": "hostile"},
        "/api/v1/session": {"token": "hpsu_not-a-token"},
        "/api/v1/workers/ask": {"worker_id": "hostile", "hostname": "box"},
        f"{on_trial}/report": {**lease, "epoch": 1, "metrics": metrics},
        f"{on_trial}/heartbeat": lease,
        f"{on_trial}/release": {**lease, "cause": "stopping", "reason": "stopping"},
        f"{on_trial}/tell": {**lease, "result": result},
    }


def test_hostile_values_in_every_field_get_no_5xx(fuzzed_api: Api) -> None:
    document = fuzzed_api.http.get("/openapi.json").json()
    worker_token = fuzzed_api.create_token("hostile-worker", "worker")
    worker = httpx.Client(
        base_url=fuzzed_api.url, timeout=30, headers={"Authorization": f"Bearer {worker_token}"}
    )
    sent, server_errors = 0, []
    for path, body in valid_bodies(fuzzed_api, worker).items():
        template = re.sub(r"/trials/\d+/", "/trials/{trial_id}/", path)
        operation = document["paths"].get(template, {}).get("post")
        if operation is None:
            continue  # not an endpoint of this version
        declared = operation["requestBody"]["content"]["application/json"]["schema"]
        fields = fields_of(declared, document)
        client = worker if "/workers/" in path or "/trials/" in path else fuzzed_api.http
        for field in sorted(set(fields) | set(leaves(body))):
            for value in hostile_values(fields.get(field, {})):
                sent += 1
                where = f"{path} {'.'.join(field)}={str(value)[:20]!r}"
                try:
                    answer = client.post(
                        path,
                        content=with_value(body, field, value),
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.TransportError as exc:  # uvicorn drops the connection of a 500
                    server_errors.append(f"{where}: {exc!r}")
                    continue
                if answer.status_code >= 500:
                    server_errors.append(f"{where}: {answer.status_code}")
    print(f"\nsent {sent} hostile values")
    assert server_errors == [], server_errors[:20]
    assert sent >= 400
    log = fuzzed_api.log.read_text()
    assert "Traceback" not in log, f"the API logged a traceback: see {fuzzed_api.log}"
