"""The public REST contract for studies, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support import query, spec, wait_until_done

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


class _Deleted:
    """The field is left out (a stable repr: test ids must be the same in every xdist worker)."""

    def __repr__(self) -> str:
        return "<left out>"


_DELETE = _Deleted()

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


# -- every error at once -----------------------------------------------------------------------


def created(api) -> tuple[int, int]:
    """(our studies, Optuna's studies), read from the database itself."""
    ours = query(api, "SELECT COUNT(*) AS n FROM hps_studies")[0]["n"]
    optuna = query(api, "SELECT COUNT(*) AS n FROM studies")[0]["n"]
    return int(ours), int(optuna)


def reasons_by_field(response) -> dict[str, list[str]]:
    assert response.status_code == 422, response.text
    out: dict[str, list[str]] = {}
    for e in response.json()["errors"]:
        out.setdefault(e["field"], []).append(e["reason"])
    return out


def test_a_spec_with_errors_in_every_stage_gets_them_all_in_one_answer(api) -> None:
    body = spec(
        "",  # the spec's shape: an empty name
        dataset={"name": "synthetic", "n_samples": 400, "n_features": 10, "n_classes": 3},
        model={"hidden_units": [8192, 8192]},  # too large for HPSEARCH_MAX_MODEL_PARAMS
        training={"epochs": 3, "optimizer": "lbfgs"},  # not an optimizer of the trainer's
        search_space={
            "dropout": {"type": "float", "low": 0.0, "high": 1.0},  # outside the trainer's
            "architecture": {"type": "categorical", "choices": ["mlp", "cnn"]},  # on a table
        },
        sampler={"type": "grid"},
        n_trials=501,
    )
    before = created(api)
    errors = reasons_by_field(api.http.post("/api/v1/studies", json=body))
    expected = {
        "name": "at least 1 character",
        "sampler.type": "'random', 'tpe' or 'qmc'",
        "training.optimizer": "'lbfgs'",
        "search_space.dropout.high": "outside what the trainer accepts: a float in [0, 1)",
        "n_trials": "at most 500",
        "search_space.architecture": "'cnn' needs image-shaped examples",
        # 10*8192 + 8192 + 8192*8192 + 8192 + 8192*3 + 3: the mlp corner
        "model.hidden_units": "the model would have 67,231,747 weights",
    }
    assert set(errors) == set(expected), errors
    for field, words in expected.items():
        assert any(words in reason for reason in errors[field]), (field, errors[field])
    assert created(api) == before  # no study row, no Optuna study


def test_a_malformed_dataset_still_gets_every_other_error(api) -> None:
    body = spec(
        "",
        dataset={"name": "synthetic", "n_features": "many"},
        model={"architecture": "cnn", "hidden_units": [8192, 8192]},
        training={"epochs": 3, "optimizer": "lbfgs"},
        search_space={"dropout": {"type": "float", "low": 0.0, "high": 1.0}},
    )
    before = created(api)
    errors = reasons_by_field(api.http.post("/api/v1/studies", json=body))
    # Its shape is unknown: the cnn and size checks are skipped, nothing else is.
    assert set(errors) == {
        "name",
        "dataset.n_features",
        "training.optimizer",
        "search_space.dropout.high",
    }, errors
    assert created(api) == before


def test_an_unknown_uploaded_dataset_is_reported_with_the_rest(api) -> None:
    body = spec("", dataset={"id": "ds_0123456789abcdef"}, training={"optimizer": "lbfgs"})
    errors = reasons_by_field(api.http.post("/api/v1/studies", json=body))
    assert set(errors) == {"name", "dataset.id", "training.optimizer"}, errors
    assert "no uploaded dataset with id 'ds_0123456789abcdef'" in errors["dataset.id"][0]


LAYER_MISUSES = [
    {"type": "float", "low": 32, "high": 512},
    {"type": "categorical", "choices": [[300, 100], [64]]},
    {"type": "categorical", "choices": ["300,100", "64"]},
    "32-512",
]


def test_every_misuse_of_a_width_search_gets_one_message_saying_how(api) -> None:
    answers = set()
    for misuse in LAYER_MISUSES:
        body = spec("misused", model={}, search_space={"hidden_units": misuse})
        errors = reasons_by_field(api.http.post("/api/v1/studies", json=body))
        assert list(errors) == ["search_space.hidden_units"], (misuse, errors)
        (reason,) = errors["search_space.hidden_units"]
        answers.add(reason)
    (message,) = answers  # the same for every misuse
    assert '"hidden_units": {"type": "int", "low": 32, "high": 512, "log": true}' in message
    assert '"hidden_layers": {"type": "int"' in message


def test_the_template_describes_the_width_and_depth(api) -> None:
    template = api.http.get("/api/v1/studies/-/template").json()
    parameters = template["parameters"]
    assert parameters["hidden_layers"] == {
        "section": "model",
        "kind": "int",
        "choices": [],
        "allowed": "an integer in [0, 32]",
    }
    assert parameters["conv_blocks"]["allowed"] == "an integer in [1, 8]"
    assert "or one such integer for every hidden layer" in parameters["hidden_units"]["allowed"]
    # The form's starting spec is still a spec the API accepts.
    body = {**template["spec"], "name": "from-template"}
    assert api.http.post("/api/v1/studies", json=body).status_code == 201


# -- width and depth, searched, trained --------------------------------------------------------


def mlp_weights(width: int, depth: int, inputs: int = 10, classes: int = 3) -> tuple[int, int]:
    """(all weights, non-trainable ones) of `depth` dense blocks of `width` units with BN before
    the activation (no bias: BN's beta replaces it), then the softmax layer."""
    per_bn = 4 * width  # gamma, beta, moving mean, moving variance
    total = inputs * width + per_bn + (depth - 1) * (width * width + per_bn) + width * classes
    return total + classes, depth * 2 * width


def test_a_searched_width_and_depth_train_models_of_those_sizes(make_api, workers) -> None:
    api = make_api("sqlite")
    body = spec(
        "width-depth",
        model={"batch_norm": "before"},
        training={"epochs": 2, "batch_size": 64, "optimizer": "adam"},
        search_space={
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "hidden_units": {"type": "int", "low": 4, "high": 64, "log": True},
            "hidden_layers": {"type": "int", "low": 1, "high": 3},
        },
        n_trials=6,
    )
    response = api.http.post("/api/v1/studies", json=body)
    assert response.status_code == 201, response.text
    study = response.json()
    assert set(study["searched"]) == {"learning_rate", "hidden_units", "hidden_layers"}
    workers(api.url, 2)
    final = wait_until_done(api, study["id"], timeout=300)
    assert final["status"] == "completed" and final["finished"] == 6, final
    trials = api.http.get(f"/api/v1/studies/{study['id']}/trials").json()["data"]
    assert [t["state"] for t in trials] == ["complete"] * 6, trials
    sizes = set()
    for trial in trials:
        width, depth = trial["params"]["hidden_units"], trial["params"]["hidden_layers"]
        assert isinstance(width, int) and 4 <= width <= 64
        assert isinstance(depth, int) and 1 <= depth <= 3
        total, frozen = mlp_weights(width, depth)
        # What the trainer built and counted, for this trial's width and depth.
        assert trial["parameters"]["total"] == total, (width, depth, trial["parameters"])
        assert trial["parameters"]["non_trainable"] == frozen
        sizes.add((width, depth))
    assert len({w for w, _ in sizes}) > 1 and len({d for _, d in sizes}) > 1, sizes
    # Optuna holds the sampled integers as they are, for its samplers and importance.
    rows = query(
        api,
        "SELECT param_name, param_value FROM trial_params "
        "WHERE param_name IN ('hidden_units', 'hidden_layers')",
    )
    assert len(rows) == 12
    assert all(float(r["param_value"]).is_integer() for r in rows)
