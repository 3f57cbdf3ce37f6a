"""The study spec's checks, in process: a bad spec gets every error it has at once, whichever
stage finds it, and the network's width and depth are searched one way, with one message for
every other way."""

from __future__ import annotations

from typing import Any

import pytest

from hpsearch.errors import InvalidSpecError
from hpsearch.params import LAYER_STACKS, validate_params
from service.spec import StudySpec, layer_search_help, parse_study_spec

MAX_TRIALS, MAX_EPOCHS, MAX_WEIGHTS = 500, 1000, 50_000_000
STACKS = {name: stack for stack in LAYER_STACKS for name in (stack.sizes, stack.count)}


def study(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "ok",
        "dataset": {"name": "digits"},
        "model": {"hidden_units": [16]},
        "training": {"epochs": 2},
        "n_trials": 5,
    }
    base.update(overrides)
    return base


def parse(raw: Any, max_weights: int = MAX_WEIGHTS, uploaded: Any = None) -> StudySpec:
    return parse_study_spec(raw, MAX_TRIALS, MAX_EPOCHS, max_weights, uploaded)


def refusal(raw: Any, **kwargs: Any) -> dict[str, list[str]]:
    """Each field of the refusal, with its reasons."""
    with pytest.raises(InvalidSpecError) as info:
        parse(raw, **kwargs)
    out: dict[str, list[str]] = {}
    for e in info.value.errors:
        out.setdefault(e.field, []).append(e.reason)
    return out


# -- every stage reports -------------------------------------------------------------------------

SEVERAL_STAGES = study(
    name="",  # the spec's shape
    dataset={"name": "synthetic", "n_features": 10, "n_classes": 3},  # tabular
    model={"hidden_units": [8192, 8192]},  # too large: 67,231,747 weights
    training={"epochs": 2, "optimizer": "lbfgs"},  # the trainer's ranges, fixed
    search_space={
        "dropout": {"type": "float", "low": 0.0, "high": 1.0},  # the trainer's, searched
        "architecture": {"type": "categorical", "choices": ["mlp", "cnn"]},  # cnn on a table
        "clip_mode": {"type": "categorical", "choices": ["value", "norm"]},  # no threshold
    },
    sampler={"type": "grid"},  # the spec's shape, in a section
    n_trials=501,  # the budget
)


def test_errors_of_every_stage_are_reported_together() -> None:
    errors = refusal(SEVERAL_STAGES)
    assert set(errors) == {
        "name",
        "sampler.type",
        "training.optimizer",
        "search_space.dropout.high",
        "n_trials",
        "training.clip_threshold",
        "search_space.architecture",
        "model.hidden_units",
    }, errors
    assert "at least 1 character" in errors["name"][0]
    assert "'lbfgs'" in errors["training.optimizer"][0]
    assert "a float in [0, 1)" in errors["search_space.dropout.high"][0]
    assert "HPSEARCH_MAX_TRIALS" in errors["n_trials"][0]
    assert "required when clip_mode is 'value'" in errors["training.clip_threshold"][0]
    assert "'cnn' needs image-shaped examples" in errors["search_space.architecture"][0]
    # 10*8192 + 8192 + 8192*8192 + 8192 + 8192*3 + 3, the mlp corner (the cnn one is refused)
    assert "67,231,747 weights" in errors["model.hidden_units"][0]


def test_a_malformed_dataset_skips_only_the_checks_that_need_its_shape() -> None:
    raw = {**SEVERAL_STAGES, "dataset": {"name": "synthetic", "n_features": "many"}}
    errors = refusal(raw)
    assert "dataset.n_features" in errors
    # Its shape is unknown: no cnn or size verdict; every other check still ran.
    assert "search_space.architecture" not in errors and "model.hidden_units" not in errors
    for field in ("name", "training.optimizer", "search_space.dropout.high", "n_trials"):
        assert field in errors, errors


def test_a_dataset_that_is_not_an_object_still_lets_the_rest_be_checked() -> None:
    errors = refusal({**SEVERAL_STAGES, "dataset": "digits"})
    assert 'must be an object such as {"name": "digits"}' in errors["dataset"][0]
    assert {"name", "training.optimizer", "search_space.dropout.high"} <= set(errors)


def test_an_unknown_uploaded_dataset_is_reported_with_the_rest() -> None:
    raw = {**SEVERAL_STAGES, "dataset": {"id": "ds_0123456789abcdef"}}
    errors = refusal(raw, uploaded=lambda ident: None)
    assert "no uploaded dataset with id 'ds_0123456789abcdef'" in errors["dataset.id"][0]
    assert {"name", "training.optimizer", "search_space.dropout.high"} <= set(errors)
    # A known upload's shape is checked like a bundled dataset's.
    errors = refusal(raw, uploaded=lambda ident: ((10,), 3))
    assert "search_space.architecture" in errors and "model.hidden_units" in errors


def test_a_malformed_search_entry_skips_only_that_parameter() -> None:
    raw = study(
        name="",
        search_space={
            "dropout": {"type": "float", "low": "none", "high": 0.5},
            "learning_rate": {"type": "float", "low": 0.5, "high": 0.1},
        },
        model={"hidden_units": [16], "architecture": "cnn"},
        dataset={"name": "synthetic"},
    )
    errors = refusal(raw)
    assert set(errors) == {
        "name",
        "search_space.dropout.low",
        "search_space.learning_rate.low",
        "model.architecture",
    }, errors


def test_a_malformed_model_section_skips_the_checks_on_the_model() -> None:
    raw = study(name="", model=[300, 100], dataset={"name": "synthetic"})
    errors = refusal(raw)
    assert set(errors) == {"name", "model"}, errors


def test_union_members_do_not_show_in_the_fields() -> None:
    errors = refusal(study(search_space={"clip_mode": {"type": "categorical", "choices": [None]}}))
    assert errors == {
        "search_space.clip_mode.choices.0": ["must be a string, a boolean or a number (got None)"]
    }
    errors = refusal(study(search_space={"dropout": {"type": "float", "low": 0.1}}))
    assert list(errors) == ["search_space.dropout.high"]


# -- width and depth: one way to search them ---------------------------------------------------


def test_the_documented_width_and_depth_search_is_accepted() -> None:
    spec = parse(
        study(
            model={},
            search_space={
                "hidden_units": {"type": "int", "low": 32, "high": 512, "log": True},
                "hidden_layers": {"type": "int", "low": 1, "high": 4},
            },
        )
    )
    assert set(spec.space) == {"hidden_units", "hidden_layers"}
    assert spec.fixed_params == {}
    sampled = validate_params({**spec.fixed_params, "hidden_units": 77, "hidden_layers": 3})
    assert sampled.hidden_units == [77, 77, 77]


def test_a_searched_depth_takes_its_width_from_the_fixed_list() -> None:
    spec = parse(
        study(
            model={"hidden_units": [300, 100]},
            search_space={"hidden_layers": {"type": "int", "low": 1, "high": 3}},
        )
    )
    assert spec.fixed_params == {"hidden_units": [300, 100]}
    trial = validate_params({**spec.fixed_params, "hidden_layers": 3})
    assert trial.hidden_units == [300, 300, 300]


def test_a_searched_width_takes_its_depth_from_the_fixed_list() -> None:
    spec = parse(
        study(
            model={"hidden_units": [300, 100, 50]},
            search_space={"hidden_units": {"type": "int", "low": 8, "high": 64}},
        )
    )
    # The trials get the list's length as the depth, and the sampled width.
    assert spec.fixed_params == {"hidden_layers": 3}
    trial = validate_params({**spec.fixed_params, "hidden_units": 8})
    assert trial.hidden_units == [8, 8, 8]


def test_conv_filters_and_blocks_are_searched_the_same_way() -> None:
    spec = parse(
        study(
            model={"architecture": "cnn", "hidden_units": [16]},
            search_space={
                "conv_filters": {"type": "int", "low": 4, "high": 32, "log": True},
                "conv_blocks": {"type": "int", "low": 1, "high": 3},
            },
        )
    )
    trial = validate_params({**spec.fixed_params, "conv_filters": 6, "conv_blocks": 2})
    assert trial.conv_filters == [6, 6]


MISUSES: list[Any] = [
    {"type": "float", "low": 32, "high": 512},
    {"type": "categorical", "choices": [[300, 100], [64]]},
    {"type": "categorical", "choices": ["300,100", "64"]},
    {"type": "categorical", "choices": [64, 128]},
    {"type": "list", "low": 1, "high": 4},
    "32-512",
    [32, 512],
]


@pytest.mark.parametrize("misuse", MISUSES, ids=[repr(m)[:40] for m in MISUSES])
@pytest.mark.parametrize("name", list(STACKS))
def test_every_other_way_of_searching_a_layer_stack_gets_the_one_message(name, misuse) -> None:
    errors = refusal(study(model={}, search_space={name: misuse}))
    assert errors == {f"search_space.{name}": [layer_search_help(STACKS[name])]}


def test_the_one_message_says_how_to_search_and_where_to_fix_a_list() -> None:
    mlp = layer_search_help(STACKS["hidden_units"])
    assert '"hidden_units": {"type": "int", "low": 32, "high": 512, "log": true}' in mlp
    assert '"hidden_layers": {"type": "int", "low": 1, "high": 4}' in mlp
    assert "fixed in model.hidden_units" in mlp
    cnn = layer_search_help(STACKS["conv_blocks"])
    assert '"conv_filters": {"type": "int"' in cnn and '"conv_blocks"' in cnn


def test_an_int_search_of_a_stack_is_checked_against_the_trainers_ranges() -> None:
    errors = refusal(
        study(
            model={},
            search_space={
                "hidden_units": {"type": "int", "low": 0, "high": 70_000},
                "hidden_layers": {"type": "int", "low": 1, "high": 40},
                "conv_blocks": {"type": "int", "low": 0, "high": 2},
            },
        )
    )
    assert errors == {
        "search_space.hidden_units.low": [
            "0 is outside what the trainer accepts: an integer in [1, 65536]"
        ],
        "search_space.hidden_units.high": [
            "70000 is outside what the trainer accepts: an integer in [1, 65536]"
        ],
        "search_space.hidden_layers.high": [
            "40 is outside what the trainer accepts: an integer in [0, 32]"
        ],
        "search_space.conv_blocks.low": [
            "0 is outside what the trainer accepts: an integer in [1, 8]"
        ],
    }


def test_a_fixed_width_or_depth_beside_its_search_is_a_conflict() -> None:
    errors = refusal(
        study(
            model={"hidden_units": 64, "hidden_layers": 2},
            search_space={
                "hidden_units": {"type": "int", "low": 8, "high": 64},
                "hidden_layers": {"type": "int", "low": 1, "high": 3},
            },
        )
    )
    assert errors == {
        "search_space.hidden_units": ["both fixed (in model) and searched; remove one"],
        "search_space.hidden_layers": ["both fixed (in model) and searched; remove one"],
    }


# -- the model-size limit over width and depth corners ---------------------------------------


def test_the_size_limit_counts_the_widest_and_deepest_model_together() -> None:
    raw = study(
        dataset={"name": "mnist_5k"},
        model={},
        search_space={
            "hidden_units": {"type": "int", "low": 32, "high": 4096, "log": True},
            "hidden_layers": {"type": "int", "low": 1, "high": 4},
        },
    )
    # Widest alone: 784*4096 + 4096 + 4096*10 + 10 = 3,256,330; deepest alone is small. Both:
    # that + 3 * (4096*4096 + 4096) = 53,600,266.
    errors = refusal(raw, max_weights=10_000_000)
    assert list(errors) == ["search_space.hidden_units"]
    assert errors["search_space.hidden_units"][0].startswith(
        "the model would have 53,600,266 weights on this dataset (28x28x1 inputs, 10 classes)"
    )
    assert parse(raw, max_weights=53_600_266).space


def test_the_size_limit_counts_the_fewest_conv_blocks_at_the_most_filters() -> None:
    # More blocks pool more: on 28x28 the largest model has the fewest blocks, at the most
    # filters: 9*128 + 128 (conv) + 14*14*128*64 + 64 (dense) + 64*10 + 10 = 1,607,626.
    raw = study(
        dataset={"name": "mnist_5k"},
        model={"architecture": "cnn", "hidden_units": [64]},
        search_space={
            "conv_filters": {"type": "int", "low": 8, "high": 128, "log": True},
            "conv_blocks": {"type": "int", "low": 1, "high": 3},
        },
    )
    errors = refusal(raw, max_weights=1_000_000)
    assert errors["search_space.conv_filters"][0].startswith(
        "the model would have 1,607,626 weights"
    )
    assert parse(raw, max_weights=1_607_626).space


def test_a_broken_size_parameter_skips_the_size_limit_only() -> None:
    raw = study(
        dataset={"name": "synthetic"},
        model={"hidden_units": [8192, 8192], "architecture": "cnn"},
        search_space={"hidden_layers": {"type": "categorical", "choices": [[1, 2]]}},
    )
    errors = refusal(raw)
    assert set(errors) == {"search_space.hidden_layers", "model.architecture"}, errors
