"""The study spec's checks, in process: a bad spec gets every error it has at once, whichever
stage finds it, and the network's width and depth are searched one way, with one message for
every other way."""

from __future__ import annotations

from typing import Any

import pytest

from hpsearch.errors import InvalidSpecError
from hpsearch.params import LAYER_STACKS, validate_params
from service.studies.spec import StudySpec, layer_search_help
from service.studies.validation import parse_study_spec

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


# -- every number bounded; no range that Optuna would silently change ----------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        (
            {"trial_timeout_seconds": 2_147_454},  # the issue's: killed every worker
            "trial_timeout_seconds",
            "at most 604,800 seconds (7 days), got 2147454",
        ),
        (
            {"timeout_seconds": 1e12},  # the issue's: "date value out of range"
            "timeout_seconds",
            "at most 31,536,000 seconds (365 days: leave it out for no limit), got 1e+12",
        ),
        ({"n_trials": 2**63}, "n_trials", "less than or equal to 1000000"),
        ({"epochs": 2**70}, "epochs", "less than or equal to 10000"),
        ({"max_retries": 11}, "max_retries", "less than or equal to 10"),
        ({"sampler": {"seed": 2**31}}, "sampler.seed", "less than or equal to 2147483647"),
        (
            {"sampler": {"type": "tpe", "n_startup_trials": 10**30}},
            "sampler.n_startup_trials",
            "less than or equal to 1000000",
        ),
        (
            {"pruner": {"interval_steps": 10**12}},
            "pruner.interval_steps",
            "less than or equal to 10000",
        ),
        (
            {"pruner": {"type": "hyperband", "reduction_factor": 2**70}},
            "pruner.reduction_factor",
            "less than or equal to 100",
        ),
    ],
)
def test_every_number_of_the_spec_has_a_maximum_named_in_its_error(
    overrides, field, reason
) -> None:
    errors = refusal(study(**overrides))
    assert field in errors, errors
    assert reason in errors[field][0]


def test_the_longest_time_limits_are_accepted() -> None:
    spec = parse(study(timeout_seconds=365 * 24 * 3600, trial_timeout_seconds=7 * 24 * 3600))
    assert (spec.timeout_seconds, spec.trial_timeout_seconds) == (31_536_000, 604_800)


def test_the_epochs_maximum_never_passes_what_a_trial_accepts() -> None:
    """HPSEARCH_MAX_EPOCHS set above the trainer's 10,000 still refuses what no trial can run."""
    with pytest.raises(InvalidSpecError) as info:
        parse_study_spec(study(training={"epochs": 10_001}), MAX_TRIALS, 10**6)
    assert "must be an integer in [1, 10000]" in str(info.value)


def test_a_stored_spec_past_a_maximum_is_read_at_the_maximum() -> None:
    """A study stored before the maxima existed still loads (and runs), at the maximum; the
    same spec submitted is refused."""
    stored = {
        **study(),
        "trial_timeout_seconds": 30 * 24 * 3600.0,
        "sampler": {"type": "tpe", "n_startup_trials": 10**7},
    }
    spec = StudySpec.model_validate(stored)
    assert spec.trial_timeout_seconds == 604_800 and spec.sampler.n_startup_trials == 1_000_000
    with pytest.raises(ValueError, match="less than or equal to 604800"):
        StudySpec.model_validate(stored, context={"submitted": True})


@pytest.mark.parametrize(
    ("value", "shown"),
    [(10**400, "1.000e+400"), (-(2**64), "-1.844e+19"), (1e308, "1e+308"), (-1e308, "-1e+308")],
)
def test_huge_search_bounds_and_choices_get_a_field_error(value, shown) -> None:
    space: dict[str, Any] = {"batch_size": {"type": "categorical", "choices": [value]}}
    if isinstance(value, int):
        space["hidden_units"] = {"type": "int", "low": 1, "high": value}
    else:
        space["dropout"] = {"type": "float", "low": 0.0, "high": value}
    errors = refusal(study(search_space=space, model={}))
    assert errors["search_space.batch_size.choices"] == [
        f"{shown} is outside an integer in [1, 65536]"
    ]
    bound = f"search_space.{'hidden_units' if isinstance(value, int) else 'dropout'}.high"
    assert errors[bound][0].startswith(f"{shown} is outside what the trainer accepts"), errors


# What Optuna does to a range it cannot search as written (optuna.distributions'
# _adjust_discrete_uniform_high, _adjust_int_uniform_high): it warns, and searches another.
SILENTLY_CHANGED = [
    (  # the issue's: Optuna searched 0.0 alone
        {"dropout": {"type": "float", "low": 0, "high": 0.1, "step": 5.0}},
        "search_space.dropout.step",
        "5.0 is larger than the range [0.0, 0.1]: Optuna would search 0.0 alone; use a step of "
        "at most 0.1 that divides high - low, or leave step out",
    ),
    (
        {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.2}},
        "search_space.dropout.step",
        "the range [0.0, 0.5] is not a whole number of steps of 0.2: Optuna would search only "
        "up to 0.4; make it high 0.4 or 0.6 (low plus a multiple of step), or use a step that "
        "divides high - low",
    ),
    (
        {"hidden_units": {"type": "int", "low": 16, "high": 100, "step": 16}},
        "search_space.hidden_units.step",
        "the range [16, 100] is not a whole number of steps of 16: Optuna would search only up "
        "to 96; make it high 96 or 112",
    ),
    (
        {"hidden_layers": {"type": "int", "low": 1, "high": 3, "step": 4}},
        "search_space.hidden_layers.step",
        "4 is larger than the range [1, 3]: Optuna would search 1 alone",
    ),
    (  # beyond the domain, the larger high is not offered
        {"dropout": {"type": "float", "low": 0.5, "high": 0.95, "step": 0.2}},
        "search_space.dropout.step",
        "the range [0.5, 0.95] is not a whole number of steps of 0.2: Optuna would search only "
        "up to 0.9; make it high 0.9 (low plus",
    ),
    (
        {"hidden_units": {"type": "int", "low": 16, "high": 512, "log": True, "step": 16}},
        "search_space.hidden_units.step",
        "cannot be combined with log",
    ),
    (
        {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True, "step": 1e-4}},
        "search_space.learning_rate.step",
        "cannot be combined with log",
    ),
    (
        {"learning_rate": {"type": "float", "low": 0.001, "high": 1.0, "step": 1e-9}},
        "search_space.learning_rate.step",
        "1e-09 cuts the range [0.001, 1.0] into more than 1,000,000 steps: leave step out",
    ),
    (  # 32 and 32.0 are one choice to Optuna: it never samples the second
        {"batch_size": {"type": "categorical", "choices": [32, 64, 32.0]}},
        "search_space.batch_size.choices",
        "32.0 is listed twice (it equals 32): Optuna would only ever sample the first",
    ),
    (  # 1 equals True, but is not a boolean
        {"input_batch_norm": {"type": "categorical", "choices": [True, 1]}},
        "search_space.input_batch_norm.choices",
        "1 is not allowed; one of False, True",
    ),
]


@pytest.mark.parametrize(("space", "field", "reason"), SILENTLY_CHANGED)
def test_a_range_optuna_would_change_is_refused_saying_what_to_write(space, field, reason) -> None:
    errors = refusal(study(search_space=space))
    assert list(errors) == [field], errors
    assert errors[field][0].startswith(reason), errors[field][0]


@pytest.mark.parametrize(
    "space",
    [
        {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}},  # 5 in decimal
        {"dropout": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}},
        {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.5}},  # both ends
        {"hidden_units": {"type": "int", "low": 16, "high": 128, "step": 16}},
        {"hidden_units": {"type": "int", "low": 16, "high": 512, "log": True, "step": 1}},
        {"batch_size": {"type": "categorical", "choices": [16, 32, 64]}},
    ],
)
def test_a_range_optuna_searches_as_written_is_accepted(space) -> None:
    assert parse(study(search_space=space, training={"epochs": 2})).space


@pytest.mark.parametrize(
    ("pruner", "field"),
    [
        ({"type": "hyperband", "min_resource": 3}, "pruner.min_resource"),
        ({"type": "successive_halving", "min_resource": 5}, "pruner.min_resource"),
        ({"type": "median", "n_warmup_steps": 3}, "pruner.n_warmup_steps"),
    ],
)
def test_a_pruner_that_could_never_prune_is_refused(pruner, field) -> None:
    errors = refusal(study(pruner=pruner))  # 2 epochs
    assert errors == {
        field: [
            f"{pruner.get('min_resource', pruner.get('n_warmup_steps'))} is more than the 2 "
            'epochs a trial trains: no trial could ever be pruned; use at most 2, or "type": '
            '"none" for no pruning'
        ]
    }
    assert parse(study(pruner={**pruner, "type": pruner["type"]}, training={"epochs": 5}))
