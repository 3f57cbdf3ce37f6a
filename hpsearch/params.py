"""The hyperparameters one trial can set: names, types, allowed ranges and defaults.

This is the contract between the service (which samples values and must reject search spaces
that reach outside these ranges) and the trainer (which builds and trains the model from them).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic
from hpsearch.results import MAX_EPOCHS, Direction, ObjectiveMetric

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


@dataclass(frozen=True)
class LayerStack:
    """A list parameter of the network (one size per layer) that can also be given, and
    searched, as two integers: one ``size`` for every layer and their ``count``.

    ``expand_layers`` turns the two into the list, for the service's checks and the trainer
    alike. Whichever of the two is not given comes from the list (the default when none is
    given): its first entry is the size, its length the count.
    """

    sizes: str  # the list parameter: hidden_units
    count: str  # how many layers: hidden_layers
    network: str  # what the layers make up, for messages: "MLP"
    layer: str  # one layer, for messages: "hidden layer"
    unit: str  # what a size counts, for messages: "units"


LAYER_STACKS: tuple[LayerStack, ...] = (
    LayerStack("hidden_units", "hidden_layers", "MLP", "hidden layer", "units"),
    LayerStack("conv_filters", "conv_blocks", "CNN", "conv block", "filters"),
)
_STACK_OF_SIZES = {stack.sizes: stack for stack in LAYER_STACKS}


def _parameter_names() -> tuple[str, ...]:
    names: list[str] = []
    for name in TrialParams.model_fields:
        names.append(name)
        if name in _STACK_OF_SIZES:
            names.append(_STACK_OF_SIZES[name].count)
    return tuple(names)


# TrialParams' fields, each layer list followed by its layer count (``hidden_layers``).
PARAMETER_NAMES: tuple[str, ...] = _parameter_names()


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
            if self.name in _STACK_OF_SIZES:
                every = _STACK_OF_SIZES[self.name].layer
                return f"a list of integers in {interval}, or one such integer for every {every}"
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


def _count_domain(stack: LayerStack) -> Domain:
    """How many layers a list parameter may hold, read off its length bounds."""
    low, high = 0, None
    for meta in TrialParams.model_fields[stack.sizes].metadata:
        if isinstance(meta, annotated_types.MinLen):
            low = meta.min_length
        elif isinstance(meta, annotated_types.MaxLen):
            high = meta.max_length
    return Domain(stack.count, "int", low=low, high=high)


def _domain_of(name: str) -> Domain:
    counted = next((s for s in LAYER_STACKS if s.count == name), None)
    if counted is not None:
        return _count_domain(counted)
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


def search_domain(name: str) -> Domain:
    """What a numeric search over parameter ``name`` samples from: its own domain, except for a
    layer list (``hidden_units``), whose search samples one size for every layer: an integer in
    the range of the list's items."""
    domain = _DOMAINS[name]
    if domain.kind != "int_list":
        return domain
    return Domain(
        name,
        "int",
        low=domain.low,
        high=domain.high,
        low_inclusive=domain.low_inclusive,
        high_inclusive=domain.high_inclusive,
    )


def _integer(value: Any) -> int | None:
    """``value`` as an integer when it is one (integral floats included, as JSON and samplers
    give them), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _expand(values: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], list[FieldError]]:
    """``expand_layers`` that returns its errors instead of raising them; a stack in error is
    left out of the values, so that the rest can still be checked."""
    out = dict(values)
    errors: list[FieldError] = []
    for stack in LAYER_STACKS:
        sizes = out.get(stack.sizes)
        one_size = stack.sizes in out and not isinstance(sizes, list)
        if stack.count not in out and not one_size:
            continue  # a list, or nothing: as it is
        # The list that gives whichever half is not given: the one given, else the default.
        listed: list[Any] = (
            sizes
            if isinstance(sizes, list)
            else list(TrialParams.model_fields[stack.sizes].get_default(call_default_factory=True))
        )
        problems: list[FieldError] = []
        count_domain = _DOMAINS[stack.count]
        n = _integer(out.pop(stack.count)) if stack.count in out else len(listed)
        if n is None or not count_domain.contains(n):
            given = values[stack.count]
            problems.append(
                FieldError(
                    prefix + stack.count, f"must be {count_domain.describe()}, got {given!r}"
                )
            )
        size_domain, where = search_domain(stack.sizes), prefix + stack.sizes
        if one_size:
            width = _integer(sizes)
            if width is None:
                problems.append(
                    FieldError(where, f"must be {_DOMAINS[stack.sizes].describe()}, got {sizes!r}")
                )
        elif listed:
            width, where = _integer(listed[0]), where + ".0"
            if width is None and n != 0:
                problems.append(
                    FieldError(where, f"must be {size_domain.describe()}, got {listed[0]!r}")
                )
        else:
            width = None
            if n != 0:
                problems.append(
                    FieldError(
                        where,
                        f"an empty list gives the {stack.layer}s no {stack.unit}: give "
                        f"{stack.sizes} as one integer (the {stack.unit} of every {stack.layer}) "
                        "or as a list",
                    )
                )
        if width is not None and n != 0 and not size_domain.contains(width):
            problems.append(FieldError(where, f"must be {size_domain.describe()}, got {width!r}"))
        if problems:
            out.pop(stack.sizes, None)
            errors += problems
        else:
            out[stack.sizes] = [width] * (n or 0)
    return out, errors


def expand_layers(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The trainer's layer lists from their two-integer form, the one place where that rule
    lives: ``{"hidden_units": 64, "hidden_layers": 3}`` -> ``{"hidden_units": [64, 64, 64]}``
    (and ``conv_filters``/``conv_blocks`` alike).

    Whenever a stack's count is given or its sizes are one integer, every layer gets the same
    size; whichever of the two is not given comes from the ``hidden_units`` list (the default
    ``[300, 100]`` when none is given): its first entry is the size, its length the count. So
    ``{"hidden_units": [300, 100], "hidden_layers": 3}`` -> ``[300, 300, 300]`` and
    ``{"hidden_units": 64}`` -> ``[64, 64]``. A list without a count is left as it is. Raises
    ``InvalidSpecError`` naming the field at fault.
    """
    out, errors = _expand(values, prefix)
    if errors:
        raise InvalidSpecError(errors)
    return out


def _describe(name: str | None) -> str:
    if name is None:
        return ", ".join(PARAMETER_NAMES)
    return _DOMAINS[name].describe() if name in _DOMAINS else ""


def validate_params(values: dict[str, Any], prefix: str = "") -> TrialParams:
    """Build ``TrialParams`` from plain values, or raise ``InvalidSpecError`` naming each bad field.

    Integral floats for integer parameters (``64.0``, as JSON or a sampler may give them) are taken
    as integers; any other type mismatch is an error. Layer lists given as two integers
    (``hidden_units`` and ``hidden_layers``) are expanded first (``expand_layers``).
    """
    if not isinstance(values, dict):
        raise InvalidSpecError(
            [FieldError(prefix.rstrip(".") or "params", "must be a JSON object")]
        )
    expanded, errors = _expand(values, prefix)
    coerced = dict(expanded)
    for name, value in expanded.items():
        domain = _DOMAINS.get(name)
        if domain and domain.kind == "int" and isinstance(value, float) and value.is_integer():
            coerced[name] = int(value)
        elif (
            domain
            and domain.kind == "float"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and abs(value) <= sys.float_info.max  # past it, no float: refused as out of range
        ):
            coerced[name] = float(value)
    try:
        params = TrialParams.model_validate(coerced)
    except ValidationError as exc:
        raise InvalidSpecError(
            [*errors, *field_errors_from_pydantic(exc, _describe, prefix)]
        ) from None
    if errors:
        raise InvalidSpecError(errors)
    return params


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


# The longest a trial may train: 7 days. Longer than any few-epoch Keras trial needs, and far
# below what every wait in the system can express: a worker's wait on its trial process is given
# in milliseconds as a C int (at most 2**31 - 1 ms, 24.8 days; past it `poll` raises
# OverflowError), and the service's deadlines are datetimes (year 9999 at most).
MAX_TRIAL_SECONDS = 7 * 24 * 3600
# Seeds are 31-bit: what every sampler and Keras accept.
MAX_SEED = 2**31 - 1


class TrainingSettings(BaseModel):
    """How one trial is run: for how long, with which seed, and what it is judged on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    objective: ObjectiveMetric = "val_accuracy"
    direction: Direction = "maximize"
    timeout_seconds: float | None = Field(
        None, gt=0.0, le=MAX_TRIAL_SECONDS, description="wall-clock limit of the trial (7 days)"
    )
    divergence_factor: float = Field(
        1e4,
        gt=1.0,
        le=1e12,
        description="a batch loss this many times the first batch's ends the trial as diverged",
    )
