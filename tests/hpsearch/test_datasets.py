"""Dataset specs are checked before anything is loaded."""

import pytest

from hpsearch.datasets import validate_dataset
from hpsearch.errors import InvalidSpecError


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"name": "imagenet"}, "dataset.name", "'digits'"),
        ({}, "dataset.name", "either a built-in dataset name"),
        ({"name": "digits", "path": "x.npz"}, "dataset.name", "not both"),
        ({"path": "data.txt"}, "dataset.path", ".npz or .csv"),
        (
            {"name": "digits", "n_features": 8},
            "dataset.n_features",
            "only applies to the 'synthetic'",
        ),
        (
            {"name": "synthetic", "n_informative": 2, "n_classes": 5},
            "dataset.n_classes",
            "2**n_informative",
        ),
        ({"name": "digits", "validation_split": 1.0}, "dataset.validation_split", "less than 1"),
        ({"name": "digits", "color": "red"}, "dataset.color", "unknown name"),
    ],
)
def test_bad_dataset_spec_names_field_and_reason(values, field, words) -> None:
    with pytest.raises(InvalidSpecError) as info:
        validate_dataset(values)
    reasons = {e.field: e.reason for e in info.value.errors}
    assert field in reasons, reasons
    assert words in reasons[field]
