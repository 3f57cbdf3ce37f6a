"""The parameter contract: every bad value is rejected with the parameter's name and range."""

import multiprocessing

import pytest
from pydantic import ValidationError

from hpsearch.errors import InvalidSpecError
from hpsearch.params import (
    PARAMETER_NAMES,
    TrainingSettings,
    expand_layers,
    parameter_domain,
    search_domain,
    validate_params,
)

MISSION_NAMES = {
    "learning_rate",
    "optimizer",
    "momentum",
    "weight_decay",
    "dropout",
    "bn_momentum",
    "batch_norm",
    "input_batch_norm",
    "clip_mode",
    "clip_threshold",
    "activation",
    "initializer",
    "hidden_units",
    "batch_size",
    "architecture",
}


def rejection(values: dict) -> dict[str, str]:
    with pytest.raises(InvalidSpecError) as info:
        validate_params(values)
    return {e.field: e.reason for e in info.value.errors}


def test_every_parameter_the_issue_names_exists() -> None:
    assert set(PARAMETER_NAMES) >= MISSION_NAMES


@pytest.mark.parametrize(
    ("values", "field", "allowed"),
    [
        ({"learning_rate": 0.0}, "learning_rate", "(0, 1000]"),
        ({"learning_rate": -1}, "learning_rate", "(0, 1000]"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"dropout": -0.1}, "dropout", "[0, 1)"),
        ({"bn_momentum": 1.0}, "bn_momentum", "(0, 1)"),
        ({"bn_momentum": 0.0}, "bn_momentum", "(0, 1)"),
        ({"momentum": 1.5}, "momentum", "[0, 1)"),
        ({"weight_decay": -0.01}, "weight_decay", "[0, 10]"),
        ({"batch_size": 0}, "batch_size", "[1, 65536]"),
        ({"batch_size": 12.5}, "batch_size", "[1, 65536]"),
        ({"clip_threshold": 0.0, "clip_mode": "norm"}, "clip_threshold", "(0, 1e+06]"),
        ({"optimizer": "lbfgs"}, "optimizer", "'sgd', 'momentum', 'nesterov', 'adam'"),
        ({"activation": "gelu"}, "activation", "'relu', 'elu', 'selu', 'leaky_relu'"),
        ({"initializer": "zeros"}, "initializer", "'he_normal'"),
        ({"batch_norm": "middle"}, "batch_norm", "'none', 'before', 'after'"),
        ({"clip_mode": "elementwise"}, "clip_mode", "'value', 'norm', 'global_norm'"),
        ({"architecture": "rnn"}, "architecture", "'mlp', 'cnn'"),
        ({"learning_rate": float("inf")}, "learning_rate", "(0, 1000]"),
    ],
)
def test_out_of_range_value_names_parameter_and_allowed_range(values, field, allowed) -> None:
    reasons = rejection(values)
    assert field in reasons, reasons
    assert allowed in reasons[field]


def test_hidden_units_item_out_of_range_names_the_item() -> None:
    reasons = rejection({"hidden_units": [300, 0]})
    assert "hidden_units.1" in reasons
    assert "[1, 65536]" in reasons["hidden_units.1"]


def test_unknown_parameter_is_rejected_with_the_known_names() -> None:
    reasons = rejection({"learning_rte": 0.01})
    assert "unknown name" in reasons["learning_rte"]
    assert "learning_rate" in reasons["learning_rte"]


def test_clip_mode_without_threshold_is_rejected() -> None:
    reasons = rejection({"clip_mode": "norm"})
    assert "required when clip_mode is 'norm'" in reasons["clip_threshold"]


def test_threshold_without_clipping_is_accepted_and_unused() -> None:
    params = validate_params({"clip_mode": "none", "clip_threshold": 5.0})
    assert params.clip_mode == "none"


def test_several_bad_values_are_all_reported() -> None:
    reasons = rejection({"learning_rate": -1, "dropout": 2, "optimizer": "x"})
    assert set(reasons) == {"learning_rate", "dropout", "optimizer"}


def test_integral_floats_from_samplers_are_taken_as_integers() -> None:
    assert validate_params({"batch_size": 64.0}).batch_size == 64


def test_domains_are_readable_by_the_service() -> None:
    lr = parameter_domain("learning_rate")
    assert (lr.kind, lr.low, lr.low_inclusive) == ("float", 0.0, False)
    assert not lr.contains(0.0) and lr.contains(1e-4)
    assert parameter_domain("dropout").contains(0.0)
    assert not parameter_domain("dropout").contains(1.0)
    assert parameter_domain("clip_mode").choices == ("none", "value", "norm", "global_norm")


# -- layer stacks: a width and a depth for every layer ------------------------------------------


@pytest.mark.parametrize(
    ("values", "hidden_units"),
    [
        ({"hidden_units": 64, "hidden_layers": 3}, [64, 64, 64]),
        ({"hidden_units": 64}, [64, 64]),  # the depth of the default [300, 100]
        ({"hidden_layers": 3}, [300, 300, 300]),  # the width of the default's first layer
        ({"hidden_units": [300, 100], "hidden_layers": 3}, [300, 300, 300]),
        ({"hidden_units": [50, 10], "hidden_layers": 1}, [50]),
        ({"hidden_units": 64, "hidden_layers": 0}, []),
        ({"hidden_units": 64.0, "hidden_layers": 2.0}, [64, 64]),  # as JSON or a sampler gives
        ({"hidden_units": [300, 100]}, [300, 100]),  # a list alone is as it is
    ],
)
def test_a_width_and_a_depth_expand_to_the_list_the_trainer_builds(values, hidden_units) -> None:
    assert validate_params(values).hidden_units == hidden_units
    assert expand_layers(values)["hidden_units"] == hidden_units
    assert "hidden_layers" not in expand_layers(values)


def test_conv_filters_and_blocks_expand_the_same_way() -> None:
    params = validate_params({"architecture": "cnn", "conv_filters": 16, "conv_blocks": 3})
    assert params.conv_filters == [16, 16, 16]
    assert validate_params({"conv_blocks": 1}).conv_filters == [32]  # default [32, 64]
    assert validate_params({"conv_filters": 8}).conv_filters == [8, 8]


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"hidden_layers": 33}, "hidden_layers", "must be an integer in [0, 32], got 33"),
        ({"hidden_layers": "3"}, "hidden_layers", "must be an integer in [0, 32], got '3'"),
        ({"hidden_layers": 2.5}, "hidden_layers", "got 2.5"),
        ({"hidden_layers": True}, "hidden_layers", "got True"),
        ({"conv_blocks": 0}, "conv_blocks", "must be an integer in [1, 8], got 0"),
        ({"conv_blocks": 9}, "conv_blocks", "must be an integer in [1, 8], got 9"),
        (
            {"hidden_units": 0, "hidden_layers": 2},
            "hidden_units",
            "must be an integer in [1, 65536], got 0",
        ),
        ({"hidden_units": 70_000}, "hidden_units", "must be an integer in [1, 65536]"),
        ({"conv_filters": 5000}, "conv_filters", "must be an integer in [1, 4096], got 5000"),
        ({"hidden_units": [0, 5], "hidden_layers": 2}, "hidden_units.0", "[1, 65536], got 0"),
        (
            {"hidden_units": [], "hidden_layers": 2},
            "hidden_units",
            "an empty list gives the hidden layers no units",
        ),
        (
            {"hidden_units": "wide"},
            "hidden_units",
            "a list of integers in [1, 65536], or one such integer for every hidden layer",
        ),
    ],
)
def test_a_bad_width_or_depth_names_its_field_and_range(values, field, words) -> None:
    reasons = rejection(values)
    assert field in reasons, reasons
    assert words in reasons[field]


def test_a_bad_depth_is_reported_with_every_other_bad_value() -> None:
    reasons = rejection({"hidden_layers": 40, "dropout": 2, "optimizer": "x"})
    assert set(reasons) == {"hidden_layers", "dropout", "optimizer"}


def test_layer_counts_are_parameters_with_their_own_domains() -> None:
    assert {"hidden_layers", "conv_blocks"} <= set(PARAMETER_NAMES)
    names = list(PARAMETER_NAMES)
    assert names.index("hidden_layers") == names.index("hidden_units") + 1
    depth = parameter_domain("hidden_layers")
    assert (depth.kind, depth.low, depth.high) == ("int", 0, 32)
    assert parameter_domain("conv_blocks").describe() == "an integer in [1, 8]"
    # A search of a layer list samples one width: an integer of the list items' range.
    width = search_domain("hidden_units")
    assert (width.kind, width.low, width.high) == ("int", 1, 65_536)
    assert search_domain("dropout") == parameter_domain("dropout")


# -- how a trial runs: every number bounded by what the system can honour -----------------------

WEEK = 7 * 24 * 3600  # the longest trial (hpsearch.params.MAX_TRIAL_SECONDS)


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"timeout_seconds": WEEK + 1}, "timeout_seconds", "less than or equal to 604800"),
        ({"timeout_seconds": 2_147_454.0}, "timeout_seconds", "604800"),  # the issue's value
        ({"timeout_seconds": 1e308}, "timeout_seconds", "604800"),
        ({"timeout_seconds": float("inf")}, "timeout_seconds", "finite"),
        ({"epochs": 10_001}, "epochs", "10000"),
        ({"seed": 2**63}, "seed", "2147483647"),
        ({"divergence_factor": 1e308}, "divergence_factor", "less than or equal to"),
    ],
)
def test_training_settings_refuse_what_no_worker_can_run(values, field, words) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingSettings(**values)
    (error,) = info.value.errors()
    assert error["loc"] == (field,) and words in error["msg"], error


def test_the_longest_trial_is_a_wait_a_worker_can_make() -> None:
    """A worker waits on its trial's process with ``Connection.poll``, which takes at most
    2**31 - 1 ms (24.8 days): the longest trial, with the grace a worker adds, fits in it three
    times over (the issue's 2,147,454 s, plus 30 s of grace, did not: every worker that took the
    trial died)."""
    assert TrainingSettings(timeout_seconds=WEEK).timeout_seconds == WEEK
    reader, writer = multiprocessing.Pipe(duplex=False)
    writer.send("epoch")  # ready: poll answers at once, once it has taken the timeout
    assert reader.poll(3 * WEEK + 60)
    with pytest.raises(OverflowError, match="timeout is too large"):
        reader.poll(2_147_454 + 30)
