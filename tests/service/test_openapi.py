"""The OpenAPI schema says what every operation answers: a typed body for each success status
that has one, and the error shape for the failures (read off the app in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.config import Settings


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("openapi")
    app = create_app(Settings(database_url=f"sqlite:///{data / 'db.sqlite'}", data_dir=data))
    schema: dict[str, Any] = app.openapi()
    return schema


def operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, ops in openapi["paths"].items()
        for method, op in ops.items()
    ]


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


def test_every_success_answer_has_a_typed_body(openapi: dict[str, Any]) -> None:
    untyped = []
    for name, op in operations(openapi):
        for status, response in op["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            contents = response.get("content")
            if not contents:
                untyped.append(f"{name} {status}: no content")
                continue
            for media, content in contents.items():
                schema = resolve(openapi, content.get("schema") or {})
                if media == "application/json":
                    typed = schema.get("type") == "object" and schema.get("properties")
                else:  # a stream: a string, binary or text
                    typed = schema.get("type") == "string"
                if not typed:
                    untyped.append(f"{name} {status} {media}: {schema}")
    assert untyped == [], "\n".join(untyped)
    assert len(operations(openapi)) >= 20


def test_every_operation_that_can_fail_names_the_error_shape(openapi: dict[str, Any]) -> None:
    for name, op in operations(openapi):
        failures = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        for status, response in failures.items():
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            assert "detail" in resolve(openapi, schema).get("properties", {}), (
                f"{name} {status}: {schema}"
            )


def test_the_states_in_the_schema_are_the_lifecycle_s(openapi: dict[str, Any]) -> None:
    from hpsearch.lifecycle import StudyStatus, TrialStatus

    schemas = openapi["components"]["schemas"]
    assert schemas["TrialStatus"]["enum"] == [s.value for s in TrialStatus]
    assert schemas["StudyStatus"]["enum"] == [s.value for s in StudyStatus]
    study = schemas["StudyPublic"]["properties"]
    assert study["status"] == {"$ref": "#/components/schemas/StudyStatus"}


def test_the_schema_file_is_not_needed_on_disk() -> None:
    # The schema is built from the models at run time: nothing to keep in step by hand.
    assert not list(Path(__file__).resolve().parents[2].glob("**/openapi.json"))
