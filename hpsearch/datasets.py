"""How a study names its data: a bundled dataset, a seeded synthetic one, an uploaded dataset
(by id), or a user file (by path, for the trainer's own command line)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic

BuiltinName = Literal["digits", "mnist_5k", "synthetic", "mnist", "fashion_mnist"]
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist_5k", "synthetic", "mnist", "fashion_mnist")
Scaling = Literal["auto", "none", "pixels", "standardize"]

DATASET_ID_PATTERN = r"^ds_[0-9a-f]{16}$"
# One example's shape and the number of classes of each bundled dataset (synthetic: from its
# fields), for checks made before any data is loaded.
BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((8, 8, 1), 10),
    "mnist_5k": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
}
# A synthetic dataset is generated in memory (as float64) by every worker: n_samples x n_features
# at most this many values (400 MB).
MAX_SYNTHETIC_VALUES = 50_000_000
_SYNTHETIC_ONLY = ("n_samples", "n_features", "n_informative", "n_classes", "synthetic_seed")


class DatasetSpec(BaseModel):
    """Which data a study trains on, and how it is split and scaled (the same for every trial).

    Exactly one of ``name`` (a built-in dataset), ``id`` (a dataset uploaded to the service) and
    ``path`` (an ``.npz`` or ``.csv`` file on the trainer's machine) is given. Splits are carved
    with ``split_seed``, never with the trial's seed, so that every trial of a study sees the
    same training and validation sets; the test set is never used while searching.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: BuiltinName | None = None
    id: str | None = Field(
        None, pattern=DATASET_ID_PATTERN, description="an uploaded dataset (POST /api/v1/datasets)"
    )
    path: str | None = Field(None, min_length=1, max_length=4096)
    label_column: str = Field(
        "label", min_length=1, description="csv by path only: the label column"
    )
    validation_split: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of the training data held out for validation"
    )
    test_split: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share held out as a test set when the data has none",
    )
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    scaling: Scaling = "auto"
    n_samples: int = Field(2_000, ge=20, le=10_000_000, description="synthetic only")
    n_features: int = Field(20, ge=2, le=100_000, description="synthetic only")
    n_informative: int = Field(10, ge=1, le=100_000, description="synthetic only")
    n_classes: int = Field(4, ge=2, le=1_000, description="synthetic only")
    synthetic_seed: int = Field(0, ge=0, le=2**31 - 1, description="synthetic only")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if sum(v is not None for v in (self.name, self.id, self.path)) != 1:
            raise ValueError(
                "name: give one of a built-in dataset name "
                f"({', '.join(BUILTIN_DATASETS)}), an uploaded dataset's id, or a file path"
            )
        if self.id is not None and "label_column" in self.model_fields_set:
            raise ValueError(
                "label_column: an uploaded dataset's label column was chosen at upload"
            )
        if self.name != "synthetic":
            given = [f for f in _SYNTHETIC_ONLY if f in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]}: only applies to the 'synthetic' dataset")
        elif self.n_samples * self.n_features > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"n_samples: n_samples x n_features must be at most {MAX_SYNTHETIC_VALUES:,} "
                f"values, got {self.n_samples:,} x {self.n_features:,}"
            )
        elif self.n_informative > self.n_features:
            raise ValueError(
                f"n_informative: must be <= n_features ({self.n_features}), "
                f"got {self.n_informative}"
            )
        elif self.n_classes > 2**self.n_informative:
            raise ValueError(
                f"n_classes: at most 2**n_informative ({2**self.n_informative}) classes can be "
                f"generated, got {self.n_classes}"
            )
        if self.path is not None and not self.path.endswith((".npz", ".csv")):
            raise ValueError("path: must name a .npz or .csv file")
        return self

    @property
    def shape(self) -> tuple[tuple[int, ...], int] | None:
        """(one example's shape, classes), known before loading for bundled and synthetic
        data; ``None`` for uploads and files."""
        if self.name == "synthetic":
            return (self.n_features,), self.n_classes
        return BUILTIN_SHAPES.get(self.name or "")

    @property
    def label(self) -> str:
        """A short name for logs and progress bars."""
        return self.name or self.id or self.path or "?"


def validate_dataset(values: Any, prefix: str = "dataset.") -> DatasetSpec:
    """Build a ``DatasetSpec`` from plain values, or raise ``InvalidSpecError`` naming fields."""
    if not isinstance(values, dict):
        raise InvalidSpecError([FieldError(prefix.rstrip("."), "must be a JSON object")])
    try:
        return DatasetSpec.model_validate(values)
    except ValidationError as exc:
        known = ", ".join(DatasetSpec.model_fields)
        raise InvalidSpecError(
            field_errors_from_pydantic(exc, lambda n: known if n is None else "", prefix)
        ) from None
