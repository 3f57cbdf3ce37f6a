"""The hyperparameters one trial can set: names, types, allowed ranges and defaults.

This is the contract between the service (which samples values and must reject search spaces
that reach outside these ranges) and the trainer (which builds and trains the model from them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic
from hpsearch.results import Direction, ObjectiveMetric

Architecture = Literal["mlp", "cnn"]
Activation = Literal["relu", "elu", "selu", "leaky_relu", "tanh", "sigmoid"]
Initializer = Literal["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal"]
BatchNormPlacement = Literal["none", "before", "after"]
Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad"]
ClipMode = Literal["none", "value", "norm", "global_norm"]

Units = Annotated[int, Field(ge=1, le=65_536)]
Filters = Annotated[int, Field(ge=1, le=4_096)]


class TrialParams(BaseModel):
    """Everything a trial can set. Defaults are a plain SGD MLP without BN, dropout or clipping.

    ``momentum`` only matters for the ``momentum`` and ``nesterov`` optimizers and
    ``clip_threshold`` only when ``clip_mode`` is not ``none``: a search space may sample them for
    every trial, so a value that the other choices make unused is accepted and ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    architecture: Architecture = "mlp"
    hidden_units: list[Units] = Field(default_factory=lambda: [300, 100], max_length=32)
    conv_filters: list[Filters] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        max_length=8,
        description="cnn only: filters of each Conv2D block",
    )
    kernel_size: int = Field(3, ge=1, le=15, description="cnn only: Conv2D kernel size")
    activation: Activation = "relu"
    initializer: Initializer = "he_normal"
    batch_norm: BatchNormPlacement = "none"
    input_batch_norm: bool = False
    bn_momentum: float = Field(0.99, gt=0.0, lt=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    optimizer: Optimizer = "sgd"
    learning_rate: float = Field(0.01, gt=0.0, le=1_000.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    clip_mode: ClipMode = "none"
    clip_threshold: float | None = Field(None, gt=0.0, le=1e6)
    batch_size: int = Field(32, ge=1, le=65_536)

    @model_validator(mode="after")
    def _clip_threshold_required(self) -> TrialParams:
        if self.clip_mode != "none" and self.clip_threshold is None:
            raise ValueError(
                f"clip_threshold: required when clip_mode is {self.clip_mode!r}; "
                f"allowed: {parameter_domain('clip_threshold').describe()}"
            )
        return self


PARAMETER_NAMES: tuple[str, ...] = tuple(TrialParams.model_fields)


@dataclass(frozen=True)
class Domain:
    """The values one parameter accepts, read off ``TrialParams`` so that there is one source."""

    name: str
    kind: Literal["float", "int", "bool", "categorical", "int_list"]
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def contains(self, value: float) -> bool:
        """Whether a number lies in this domain's range (for search-space bounds)."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (
            value < self.low or (value == self.low and not self.low_inclusive)
        ):
            return False
        return not (
            self.high is not None
            and (value > self.high or (value == self.high and not self.high_inclusive))
        )

    def describe(self) -> str:
        """A human-readable domain, e.g. ``a float in (0, 1)`` or ``one of 'sgd', 'adam'``."""
        if self.kind in ("categorical", "bool"):
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        interval = (
            f"{'[' if self.low_inclusive else '('}{lo}, {hi}{']' if self.high_inclusive else ')'}"
        )
        if self.kind == "int_list":
            return f"a list of integers in {interval}"
        return f"{'a float' if self.kind == 'float' else 'an integer'} in {interval}"


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            out.update(low=m.gt, low_inclusive=False)
        elif isinstance(m, annotated_types.Ge):
            out.update(low=m.ge, low_inclusive=True)
        elif isinstance(m, annotated_types.Lt):
            out.update(high=m.lt, high_inclusive=False)
        elif isinstance(m, annotated_types.Le):
            out.update(high=m.le, high_inclusive=True)
    return out


def _domain_of(name: str) -> Domain:
    info = TrialParams.model_fields[name]
    annotation = info.annotation
    optional = False
    args = get_args(annotation)
    if type(None) in args:  # float | None
        optional = True
        annotation = next(a for a in args if a is not type(None))
    if get_origin(annotation) is Literal:
        return Domain(name, "categorical", choices=get_args(annotation))
    if annotation is bool:
        return Domain(name, "bool", choices=(False, True))
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        item_metadata: list[Any] = []
        for meta in getattr(item, "__metadata__", ()):  # Annotated[int, Field(ge=..)]
            item_metadata.extend(getattr(meta, "metadata", [meta]))
        return Domain(name, "int_list", **_bounds(item_metadata))
    kind: Literal["float", "int"] = "float" if annotation is float else "int"
    return Domain(name, kind, optional=optional, **_bounds(info.metadata))


_DOMAINS: dict[str, Domain] = {name: _domain_of(name) for name in PARAMETER_NAMES}


def parameter_domain(name: str) -> Domain:
    """The domain of parameter ``name``; ``KeyError`` for a name that is not a parameter."""
    return _DOMAINS[name]


def _describe(name: str | None) -> str:
    if name is None:
        return ", ".join(PARAMETER_NAMES)
    return _DOMAINS[name].describe() if name in _DOMAINS else ""


def validate_params(values: dict[str, Any], prefix: str = "") -> TrialParams:
    """Build ``TrialParams`` from plain values, or raise ``InvalidSpecError`` naming each bad field.

    Integral floats for integer parameters (``64.0``, as JSON or a sampler may give them) are taken
    as integers; any other type mismatch is an error.
    """
    if not isinstance(values, dict):
        raise InvalidSpecError(
            [FieldError(prefix.rstrip(".") or "params", "must be a JSON object")]
        )
    coerced = dict(values)
    for name, value in values.items():
        domain = _DOMAINS.get(name)
        if domain and domain.kind == "int" and isinstance(value, float) and value.is_integer():
            coerced[name] = int(value)
        elif (
            domain
            and domain.kind == "float"
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            coerced[name] = float(value)
    try:
        return TrialParams.model_validate(coerced)
    except ValidationError as exc:
        raise InvalidSpecError(field_errors_from_pydantic(exc, _describe, prefix)) from None


def count_weights(params: TrialParams, input_shape: tuple[int, ...], n_classes: int) -> int:
    """How many weights (trainable or not) the trainer's model for ``params`` has, counted
    without building it: the service refuses a study whose model would not fit before any
    trial runs. Mirrors ``trainer.model.build_model`` (a test holds the two together)."""

    def bn(channels: int) -> int:  # gamma, beta, moving mean, moving variance
        return 4 * channels

    def block(fan_in: int, units: int, per_unit: int) -> int:
        bias = 0 if params.batch_norm == "before" else units
        return fan_in * per_unit * units + bias + (bn(units) if params.batch_norm != "none" else 0)

    total = 0
    if params.architecture == "mlp":
        width = 1
        for d in input_shape:
            width *= d
        total += bn(width) if params.input_batch_norm else 0
    else:
        height, wide = input_shape[0], input_shape[1] if len(input_shape) > 1 else 1
        channels = input_shape[2] if len(input_shape) > 2 else 1
        total += bn(channels) if params.input_batch_norm else 0
        for filters in params.conv_filters:
            total += block(channels, filters, params.kernel_size**2)
            channels = filters
            if height >= 2 and wide >= 2:
                height, wide = height // 2, wide // 2
        width = height * wide * channels
    for units in params.hidden_units:
        total += block(width, units, 1)
        width = units
    return total + width * n_classes + n_classes


class TrainingSettings(BaseModel):
    """How one trial is run: for how long, with which seed, and what it is judged on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(5, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    objective: ObjectiveMetric = "val_accuracy"
    direction: Direction = "maximize"
    timeout_seconds: float | None = Field(None, gt=0.0, description="wall-clock limit of the trial")
    divergence_factor: float = Field(
        1e4,
        gt=1.0,
        description="a batch loss this many times the first batch's ends the trial as diverged",
    )
