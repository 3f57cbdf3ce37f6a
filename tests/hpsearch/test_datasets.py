"""Dataset specs are checked before anything is loaded."""

import pytest

from hpsearch.datasets import validate_dataset
from hpsearch.errors import InvalidSpecError


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"name": "imagenet"}, "dataset.name", "'digits'"),
        ({}, "dataset.name", "give one of a built-in dataset name"),
        ({"name": "digits", "path": "x.npz"}, "dataset.name", "an uploaded dataset's id"),
        ({"name": "digits", "id": "ds_0123456789abcdef"}, "dataset.name", "give one of"),
        ({"id": "ds_../../etc"}, "dataset.id", "should match pattern"),
        (
            {"id": "ds_0123456789abcdef", "label_column": "y"},
            "dataset.label_column",
            "chosen at upload",
        ),
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
