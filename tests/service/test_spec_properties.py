"""Property tests (Hypothesis) of the spec's validation, the service's checks and the trainer's
together: every spec the service accepts can be run by the trainer, and every spec it rejects
says why, field by field.

Specs are drawn near the valid ones (a valid base with fields changed, dropped, added, or given
values of the wrong type or out of range), so that both sides of the line are explored; and with
hostile values anywhere (nesting hundreds of levels deep, 1e308, -0.0, integers past 2**63,
strings of 10,000 characters, a NUL), which must get a refusal, never another exception."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.datasets import validate_dataset
from hpsearch.errors import InvalidSpecError
from hpsearch.params import PARAMETER_NAMES, TrainingSettings, validate_params
from hpsearch.results import TrialState
from service import optuna_bridge
from service.studies.spec import MODEL_PARAMS, TRAINING_PARAMS
from service.studies.validation import parse_study_spec
from trainer.data import Dataset
from trainer.training import run_trial

EXAMPLES = int(os.environ.get("HPSEARCH_PROPERTY_EXAMPLES", "40"))
MAX_TRIALS, MAX_EPOCHS, MAX_WEIGHTS = 500, 50, 2_000_000
optuna.logging.set_verbosity(optuna.logging.WARNING)

# -- drawing specs -----------------------------------------------------------------------------


def nested(levels: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``levels`` alternating objects and arrays."""
    for level in range(levels):
        leaf = {"a": leaf} if level % 2 else [leaf]
    return leaf


# What an attacker sends: past every bound a number or a string can have, and nested past what a
# recursive parser, validator or serializer can follow.
HOSTILE_VALUES: list[Any] = [
    1e12,
    1e308,
    -1e308,
    -0.0,
    5e-324,
    2**63,
    2**64 + 1,
    -(2**63) - 1,
    10**400,
    "x" * 10_000,
    "é" * 201,
    "a\x00b",
    "",
    nested(40),
    nested(300),
]
hostile = st.sampled_from(HOSTILE_VALUES)

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=8)
    | hostile,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
PARAM_VALUES: dict[str, Any] = {
    "architecture": st.sampled_from(["mlp", "cnn", "rnn"]),
    # A list per layer, or one width for every layer (with hidden_layers, or the default's two).
    "hidden_units": st.lists(st.integers(-2, 300), max_size=4) | st.integers(-2, 80),
    "hidden_layers": st.one_of(
        st.integers(0, 4), st.integers(0, 4), st.integers(-1, 40), st.sampled_from(["2", 1.5])
    ),
    "conv_filters": st.lists(st.integers(0, 16), min_size=0, max_size=3) | st.integers(-1, 16),
    "conv_blocks": st.integers(1, 3) | st.integers(-1, 10),
    "kernel_size": st.integers(0, 16),
    "activation": st.sampled_from(["relu", "elu", "selu", "tanh", "swish"]),
    "initializer": st.sampled_from(["he_normal", "glorot_uniform", "zeros"]),
    "batch_norm": st.sampled_from(["none", "before", "after", "both"]),
    "input_batch_norm": st.booleans(),
    "bn_momentum": st.floats(-0.5, 1.5),
    "dropout": st.floats(-0.1, 1.1),
    "optimizer": st.sampled_from(["sgd", "momentum", "nesterov", "adam", "rmsprop", "lbfgs"]),
    "learning_rate": st.floats(-1, 2) | st.floats(1e-6, 0.5),
    "momentum": st.floats(-0.2, 1.2),
    "weight_decay": st.floats(-1, 0.1),
    "clip_mode": st.sampled_from(["none", "value", "norm", "global_norm", "max"]),
    "clip_threshold": st.floats(-1, 20) | st.none(),
    "batch_size": st.integers(-1, 300),
}
DATASETS = st.one_of(
    st.just({"name": "digits"}),
    st.fixed_dictionaries(
        {"name": st.just("synthetic")},
        optional={
            "n_samples": st.integers(0, 300),
            "n_features": st.integers(0, 30),
            "n_informative": st.integers(0, 10),
            "n_classes": st.integers(0, 6),
            "val_fraction": st.floats(-0.1, 0.9),
        },
    ),
    st.dictionaries(st.sampled_from(["name", "path", "id", "scale"]), anything, max_size=2),
)


# Searches of a network's width and depth: mostly the one way that works (an int range), with
# bounds mostly inside the trainer's and sometimes anywhere; now and then one of the ways that
# get the one message. Per name: (usual bounds, any bounds).
LAYER_SEARCH_BOUNDS = {
    "hidden_units": (st.integers(1, 64), st.integers(-2, 80)),
    "hidden_layers": (st.integers(0, 4), st.integers(-1, 40)),
    "conv_filters": (st.integers(1, 16), st.integers(-1, 5000)),
    "conv_blocks": (st.integers(1, 3), st.integers(-1, 10)),
}


@st.composite
def layer_search(draw: Any, name: str) -> Any:
    kind = draw(st.sampled_from(["int", "int", "int", "float", "categorical", "text"]))
    if kind == "categorical":
        choices = st.lists(st.integers(1, 64), min_size=1, max_size=3) | st.integers(1, 64)
        return {"type": kind, "choices": draw(st.lists(choices, min_size=1, max_size=3))}
    if kind == "text":
        return draw(st.sampled_from(["32-512", "300,100"]))
    usual, anywhere = LAYER_SEARCH_BOUNDS[name]
    if draw(st.integers(0, 4)) == 0:
        low, high = draw(anywhere), draw(anywhere)
    else:
        low = draw(usual)
        high = low + draw(st.integers(1, 3))
    return {"type": kind, "low": low, "high": high, "log": draw(st.booleans())}


@st.composite
def search_param(draw: Any, name: str) -> Any:
    if name in LAYER_SEARCH_BOUNDS:
        return draw(layer_search(name))
    kind = draw(st.sampled_from(["float", "int", "categorical", "bogus"]))
    if kind == "categorical":
        return {"type": kind, "choices": draw(st.lists(PARAM_VALUES[name], max_size=3))}
    low = draw(st.floats(-1, 300, allow_nan=False) if kind != "int" else st.integers(-2, 300))
    high = draw(st.floats(-1, 300, allow_nan=False) if kind != "int" else st.integers(-2, 300))
    param = {"type": kind, "low": low, "high": high, "log": draw(st.booleans())}
    if draw(st.integers(0, 3)) == 0:  # now and then in steps, which may or may not fit
        param["step"] = draw(STEPS)
    return param


# Steps that divide a range, steps that do not, steps larger than it, and steps too fine.
STEPS = st.sampled_from([0.05, 0.1, 0.2, 0.25, 1, 2, 3, 5.0, 16, 1e-9]) | st.floats(1e-3, 50)


VALID_DATASETS = st.sampled_from(
    [
        {"name": "digits"},
        {
            "name": "synthetic",
            "n_samples": 200,
            "n_features": 6,
            "n_informative": 4,
            "n_classes": 3,
        },
        {"name": "synthetic", "n_samples": 300, "n_features": 64, "n_classes": 2},
    ]
)


# What a drawn spec changes, each drawn with this weight: the network's width and depth
# ("layers") as often as any other searched parameter.
CHANGES = (
    "model",
    "model",
    "training",
    "space",
    "space",
    "layers",
    "layers",
    "dataset",
    "top",
    "drop",
    "hostile",
)
# Where a hostile value can go: every field of the spec that takes a string or a number.
FIELDS = (
    ("name",),
    ("n_trials",),
    ("epochs",),
    ("timeout_seconds",),
    ("trial_timeout_seconds",),
    ("max_retries",),
    ("dataset", "name"),
    ("dataset", "id"),
    ("dataset", "path"),
    ("dataset", "label_column"),
    ("dataset", "validation_split"),
    ("dataset", "split_seed"),
    ("dataset", "scaling"),
    ("dataset", "n_samples"),
    *(("model", name) for name in MODEL_PARAMS),
    *(("training", name) for name in (*TRAINING_PARAMS, "epochs")),
    ("objective", "metric"),
    ("objective", "direction"),
    ("sampler", "type"),
    ("sampler", "seed"),
    ("sampler", "n_startup_trials"),
    ("sampler", "qmc_type"),
    ("pruner", "type"),
    ("pruner", "n_startup_trials"),
    ("pruner", "n_warmup_steps"),
    ("pruner", "interval_steps"),
    ("pruner", "min_resource"),
    ("pruner", "reduction_factor"),
    ("search_space", "dropout", "type"),
    ("search_space", "dropout", "low"),
    ("search_space", "dropout", "high"),
    ("search_space", "dropout", "step"),
    ("search_space", "hidden_units", "low"),
    ("search_space", "hidden_units", "high"),
    ("search_space", "hidden_units", "step"),
    ("search_space", "activation", "choices"),
)
HOSTILE_BASE_SPACE: dict[str, Any] = {
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_units": {"type": "int", "low": 8, "high": 64},
    "activation": {"type": "categorical", "choices": ["relu", "elu"]},
}


def put(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``spec``'s field at ``path`` (a choice list gets the value as one of its choices)."""
    if path[0] == "search_space" and not isinstance(spec.get("search_space"), dict):
        spec["search_space"] = {k: dict(v) for k, v in HOSTILE_BASE_SPACE.items()}
    where = spec
    for key in path[:-1]:
        if not isinstance(where.get(key), dict):
            where[key] = {}
        where = where[key]
    where[path[-1]] = [value, "relu"] if path[-1] == "choices" else value


@st.composite
def specs(draw: Any) -> Any:
    """A valid spec with 0 to 3 changes, each of which may or may not make it invalid."""
    if draw(st.integers(0, 40)) == 0:
        return draw(anything)  # not even an object, now and then
    spec: dict[str, Any] = {
        "name": "ok",
        "dataset": draw(VALID_DATASETS),
        "model": {"hidden_units": [16]},
        "training": {"epochs": 2},
        "n_trials": 5,
    }
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(CHANGES))
        if change == "model":
            name = draw(st.sampled_from([*MODEL_PARAMS, "colour"]))
            spec.setdefault("model", {})[name] = draw(PARAM_VALUES.get(name, anything))
        elif change == "training":
            name = draw(st.sampled_from([*TRAINING_PARAMS, "epochs", "flavour"]))
            value = st.integers(-1, 60) if name == "epochs" else PARAM_VALUES.get(name, anything)
            spec.setdefault("training", {})[name] = draw(value)
        elif change == "space":
            name = draw(st.sampled_from([*PARAMETER_NAMES, "colour"]))
            space = spec.setdefault("search_space", {})
            space[name] = draw(search_param(name) if name in PARAM_VALUES else anything)
        elif change == "layers":  # the network's width or depth, searched
            name = draw(st.sampled_from(sorted(LAYER_SEARCH_BOUNDS)))
            spec.setdefault("search_space", {})[name] = draw(layer_search(name))
            if name.startswith("conv") and draw(st.booleans()):
                spec.setdefault("model", {})["architecture"] = "cnn"
        elif change == "dataset":
            spec["dataset"] = draw(DATASETS)
        elif change == "top":
            key = draw(st.sampled_from(["name", "n_trials", "sampler", "pruner", "extra"]))
            spec[key] = draw(
                st.sampled_from(["", " bad", "x" * 201, "fine-2"])
                if key == "name"
                else st.integers(-1, 600)
                if key == "n_trials"
                else anything
            )
        elif change == "hostile":
            put(spec, draw(st.sampled_from(FIELDS)), draw(hostile))
        else:
            spec.pop(draw(st.sampled_from(sorted(spec))), None)
    return spec


def accept(raw: Any) -> Any:
    """What ``POST /api/v1/studies`` runs on a spec (without the database: no dataset has been
    uploaded)."""
    spec = parse_study_spec(raw, MAX_TRIALS, MAX_EPOCHS, MAX_WEIGHTS, lambda ident: None)
    assert validate_dataset(spec.dataset).shape is not None  # accepted: bundled or synthetic
    return spec


# -- the properties --------------------------------------------------------------------------


@given(raw=specs())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_a_spec_is_either_runnable_by_the_trainer_or_rejected_with_reasons(raw: Any) -> None:
    try:
        spec = accept(raw)
    except InvalidSpecError as exc:
        assert exc.errors, raw
        top = set(raw) if isinstance(raw, dict) else set()
        for error in exc.errors:
            assert error.reason.strip(), (raw, error)
            head = error.field.split(".")[0]
            # Each error names a part of what was sent (or the body as a whole), or the section
            # where a parameter that was not given belongs (a clipping threshold, in training).
            known = {"(body)", "name", "dataset", "n_trials", "model", "training"}
            assert head in top | known, (raw, error)
        return
    # Accepted: a trial, sampled as the service samples it, trains in the trainer. Optuna takes
    # the search space as written: it warns whenever it would change a range.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, sampled = optuna_bridge.ask(study, spec)
    params = validate_params({**spec.fixed_params, **sampled})
    training = TrainingSettings(epochs=spec.n_epochs, seed=0, objective=spec.objective.metric)
    (input_shape, n_classes) = validate_dataset(spec.dataset).shape or ((), 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, *input_shape)).astype("float32")
    y = np.arange(16) % n_classes
    data = Dataset("drawn", x, y, x, y, x[:0], y[:0], n_classes)
    one_epoch = training.model_copy(update={"epochs": 1})
    result = run_trial(params, data, one_epoch)
    assert result.state in (TrialState.COMPLETE, TrialState.DIVERGED), (raw, result.reason)
    if result.state is TrialState.COMPLETE:
        assert result.best_value is not None and math.isfinite(result.best_value)


def test_the_drawn_specs_reach_both_sides_of_the_line() -> None:
    """The strategy is worth its examples: some drawn specs are accepted, some rejected."""
    outcomes: list[bool] = []

    @given(raw=specs())
    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    def draw(raw: Any) -> None:
        try:
            accept(raw)
            outcomes.append(True)
        except InvalidSpecError:
            outcomes.append(False)

    draw()
    assert 0.05 < sum(outcomes) / len(outcomes) < 0.95, sum(outcomes)


NUMERIC = ("dropout", "learning_rate", "bn_momentum", "momentum", "batch_size", "hidden_units")


@st.composite
def stepped_ranges(draw: Any) -> Any:
    """A search of one numeric parameter, in steps that may or may not fit its range."""
    name = draw(st.sampled_from(NUMERIC))
    integer = name in ("batch_size", "hidden_units")
    if integer:
        low = draw(st.integers(1, 200))
        param = {"type": "int", "low": low, "high": low + draw(st.integers(0, 300))}
    else:
        low = draw(st.sampled_from([0.0, 0.001, 0.05, 0.1, 0.5, 0.9]))
        high = low + draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.4, 0.45, 0.09]))
        param = {"type": "float", "low": low, "high": high}
    param["log"] = draw(st.booleans())
    if draw(st.integers(0, 4)):
        param["step"] = draw(st.integers(1, 64) if integer else STEPS)
    return name, param


@given(drawn=stepped_ranges())
@settings(max_examples=EXAMPLES * 10, deadline=None, database=None)
def test_optuna_searches_every_accepted_range_as_written(drawn: Any) -> None:
    """No accepted range makes Optuna warn (it warns whenever it changes one), and every value
    it samples lies in the range as written."""
    name, param = drawn
    raw = {
        "name": "ranges",
        "dataset": {"name": "digits"},
        "model": {},
        "training": {"epochs": 2},
        "search_space": {name: param},
        "n_trials": 5,
    }
    try:
        spec = accept(raw)
    except InvalidSpecError as exc:
        assert all(e.field.startswith(f"search_space.{name}") for e in exc.errors), exc
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (distribution,) = optuna_bridge.distributions(spec).values()
        for _ in range(5):
            _, sampled = optuna_bridge.ask(study, spec)
            assert param["low"] <= sampled[name] <= param["high"], (param, sampled)
    assert (distribution.low, distribution.high) == (param["low"], param["high"])


@given(raw=specs())
@settings(
    max_examples=EXAMPLES * 5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_value_gets_anything_but_an_acceptance_or_a_refusal(raw: Any) -> None:
    """Whatever is drawn (hostile values included), the checks accept or refuse with reasons
    that name a field; no other exception (an OverflowError, a RecursionError: a 500)."""
    try:
        accept(raw)
    except InvalidSpecError as exc:
        assert exc.errors and all(e.field and e.reason.strip() for e in exc.errors), raw


@pytest.mark.parametrize("path", FIELDS, ids=[".".join(p) for p in FIELDS])
def test_every_field_refuses_every_hostile_value_by_name(path: tuple[str, ...]) -> None:
    """Every string and number field, every hostile value: a refusal naming that field (or its
    section), or an acceptance of a value in range."""
    for value in HOSTILE_VALUES:
        raw: dict[str, Any] = {
            "name": "hostile",
            "dataset": {"name": "synthetic" if path == ("dataset", "n_samples") else "digits"},
            "model": {},
            "training": {} if path == ("epochs",) else {"epochs": 2},
            "search_space": {k: dict(v) for k, v in HOSTILE_BASE_SPACE.items()},
            "n_trials": 5,
        }
        if path[0] in ("model", "training"):
            raw["search_space"].pop(path[1], None)  # fixed, so not searched
        put(raw, path, value)
        try:
            accept(raw)
        except InvalidSpecError as exc:
            fields = [e.field for e in exc.errors]
            named = ".".join(path[:2]) if path[0] == "search_space" else path[0]
            assert any(f.startswith(named) for f in fields), (path, value, fields)
            continue
        # Accepted: only a value in range could be: a tiny low bound, or a free string where a
        # built-in dataset ignores it (the API refuses the NUL, before the spec is read).
        free_text = path == ("dataset", "label_column") and isinstance(value, str)
        assert value in (-0.0, 5e-324) or free_text, (path, value)
