"""Property tests (Hypothesis) of the spec's validation, the service's checks and the trainer's
together: every spec the service accepts can be run by the trainer, and every spec it rejects
says why, field by field.

Specs are drawn near the valid ones (a valid base with fields changed, dropped, added, or given
values of the wrong type or out of range), so that both sides of the line are explored."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import optuna
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.datasets import validate_dataset
from hpsearch.errors import InvalidSpecError
from hpsearch.params import PARAMETER_NAMES, TrainingSettings, validate_params
from hpsearch.results import TrialState
from service import optuna_bridge
from service.spec import MODEL_PARAMS, TRAINING_PARAMS, parse_study_spec
from trainer.data import Dataset
from trainer.training import run_trial

EXAMPLES = int(os.environ.get("HPSEARCH_PROPERTY_EXAMPLES", "40"))
MAX_TRIALS, MAX_EPOCHS, MAX_WEIGHTS = 500, 50, 2_000_000
optuna.logging.set_verbosity(optuna.logging.WARNING)

# -- drawing specs -----------------------------------------------------------------------------

anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
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
    return {"type": kind, "low": low, "high": high, "log": draw(st.booleans())}


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
)


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
    # Accepted: a trial, sampled as the service samples it, trains in the trainer.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
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
