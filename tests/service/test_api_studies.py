"""The public REST contract for studies, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.service.conftest import spec

ISSUE_SPEC: dict[str, Any] = {
    "name": "digits-bn-clip",
    "dataset": {"name": "digits"},
    "model": {
        "architecture": "mlp",
        "hidden_units": [300, 100],
        "activation": "elu",
        "initializer": "he_normal",
        "batch_norm": "before",
    },
    "training": {"epochs": 5, "batch_size": 50, "optimizer": "sgd"},
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "search_space": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "bn_momentum": {"type": "float", "low": 0.9, "high": 0.999},
        "clip_mode": {"type": "categorical", "choices": ["value", "norm"]},
        "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    },
    "sampler": {"type": "random", "seed": 42},
    "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "n_trials": 30,
}


def with_change(path: str, value: Any, name: str) -> dict[str, Any]:
    body = copy.deepcopy(ISSUE_SPEC)
    body["name"] = name
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return body


_DELETE = object()

BAD_SPECS = [
    ("search_space.learning_rate.low", 0.5, "search_space.learning_rate.low", "must be below high"),
    ("search_space.dropout.low", 0.5, "search_space.dropout.low", "must be below high"),
    ("search_space.learning_rate.low", 0.0, "search_space.learning_rate.low", "> 0 on a log scale"),
    (
        "search_space.clip_threshold.low",
        -1.0,
        "search_space.clip_threshold.low",
        "> 0 on a log scale",
    ),
    ("model.dropout", 0.2, "search_space.dropout", "both fixed (in model) and searched"),
    (
        "search_space.lr",
        {"type": "float", "low": 0.1, "high": 1.0},
        "search_space.lr",
        "unknown parameter",
    ),
    ("model.depth", 3, "model.depth", "unknown parameter"),
    ("dataset", {"name": "imagenet"}, "dataset.name", "'digits'"),
    (
        "search_space.dropout.high",
        1.0,
        "search_space.dropout.high",
        "outside what the trainer accepts: a float in [0, 1)",
    ),
    ("search_space.bn_momentum.high", 1.5, "search_space.bn_momentum.high", "a float in (0, 1)"),
    (
        "search_space.clip_mode.choices",
        ["value", "elementwise"],
        "search_space.clip_mode.choices",
        "'elementwise' is not allowed",
    ),
    (
        "search_space.clip_threshold",
        _DELETE,
        "training.clip_threshold",
        "required when clip_mode is 'value'",
    ),
    ("n_trials", 0, "n_trials", "greater than or equal to 1"),
    ("n_trials", 501, "n_trials", "at most 500 (configured maximum, HPSEARCH_MAX_TRIALS)"),
    ("training.epochs", 0, "training.epochs", "in [1, 1000] (HPSEARCH_MAX_EPOCHS)"),
    ("training.optimizer", "lbfgs", "training.optimizer", "'sgd'"),
    ("sampler", {"type": "grid"}, "sampler.type", "'random', 'tpe' or 'qmc'"),
    ("pruner", {"type": "patient"}, "pruner.type", "'median'"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), BAD_SPECS, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD_SPECS]
)
def test_bad_spec_gets_422_naming_field_and_reason(api, path, value, field, words) -> None:
    response = api.http.post("/api/v1/studies", json=with_change(path, value, "bad-spec"))
    assert response.status_code == 422, response.text
    errors: dict[str, list[str]] = {}
    for e in response.json()["errors"]:
        errors.setdefault(e["field"], []).append(e["reason"])
    assert field in errors, errors
    assert any(words in reason for reason in errors[field]), errors[field]
    assert api.http.get("/api/v1/studies").json()["count"] == 0 or all(
        s["name"] != "bad-spec" for s in api.http.get("/api/v1/studies").json()["data"]
    )


def test_issue_spec_is_accepted_and_reported_back(api) -> None:
    body = with_change("n_trials", 30, "issue-spec")
    response = api.http.post("/api/v1/studies", json=body)
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["status"] == "queued"
    assert study["n_trials"] == 30 and study["finished"] == 0 and study["progress"] == 0
    assert study["spec"]["search_space"]["learning_rate"]["log"] is True
    assert study["best_trial"] is None
    assert set(study["trial_counts"]) == {
        "running",
        "complete",
        "pruned",
        "diverged",
        "timed_out",
        "failed",
    }
    fetched = api.http.get(f"/api/v1/studies/{study['id']}").json()
    assert fetched["name"] == "issue-spec" and fetched["created_at"]


def test_taken_name_gets_409(api) -> None:
    assert api.http.post("/api/v1/studies", json=spec("twice")).status_code == 201
    response = api.http.post("/api/v1/studies", json=spec("twice"))
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "name"


def test_omitted_search_space_searches_the_missions_four(api) -> None:
    body = spec("defaults")
    body.pop("sampler")
    study = api.http.post("/api/v1/studies", json=body).json()
    assert study["spec"].get("search_space") is None
    trial = api.http.post("/api/v1/workers/ask", json={"worker_id": "probe"}).json()
    for name in ("learning_rate", "dropout", "bn_momentum", "clip_mode", "clip_threshold"):
        assert name in trial["params"]
    assert 1e-4 <= trial["params"]["learning_rate"] <= 1e-1


def test_studies_are_paginated_newest_first(api) -> None:
    for i in range(3):
        api.http.post("/api/v1/studies", json=spec(f"page-{i}"))
    page = api.http.get("/api/v1/studies", params={"limit": 2}).json()
    assert page["count"] >= 3 and len(page["data"]) == 2
    assert page["data"][0]["id"] > page["data"][1]["id"]
    assert api.http.get("/api/v1/studies", params={"limit": 0}).status_code == 422


def test_unknown_study_gets_404(api) -> None:
    assert api.http.get("/api/v1/studies/999999").status_code == 404
    assert api.http.post("/api/v1/studies/999999/stop").status_code == 404


def test_health_and_readiness(api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    assert api.http.get("/readyz").json() == {"status": "ready"}
    assert api.http.get("/docs").status_code == 200
