"""The parameter contract: every bad value is rejected with the parameter's name and range."""

import pytest

from hpsearch.errors import InvalidSpecError
from hpsearch.params import PARAMETER_NAMES, parameter_domain, validate_params

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
