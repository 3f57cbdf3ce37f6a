"""What a spec's dataset admits: the dataset exists and has the shape the model needs, every
combination of fixed and searched values builds (the corners of the search space), and the
largest model stays within the weight limit."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from hpsearch.datasets import validate_dataset
from hpsearch.errors import FieldError, InvalidSpecError
from hpsearch.params import (
    PARAMETER_NAMES,
    count_weights,
    validate_params,
)
from service.studies.spec import (
    MODEL_PARAMS,
    SIZE_PARAMS,
    Categorical,
    DatasetShape,
    IntRange,
    SearchParam,
    StudySpec,
    trial_fixed,
)


def check_dataset(
    spec: StudySpec,
    broken: set[str],
    uploaded_shape: Callable[[str], DatasetShape | None] | None,
) -> tuple[list[FieldError], DatasetShape | None]:
    """The dataset's own errors, and its shape when the dataset is usable and its shape known."""
    if "dataset" in broken:
        return [], None
    try:
        dataset = validate_dataset(spec.dataset)
    except InvalidSpecError as exc:
        return list(exc.errors), None
    if dataset.path is not None:
        reason = (
            "files are not read by path through the API: name a built-in dataset, "
            "or upload the file and give its id"
        )
        return [FieldError("dataset.path", reason)], None
    if dataset.id is None:
        return [], dataset.shape
    if uploaded_shape is None:
        return [], None
    shape = uploaded_shape(dataset.id)
    if shape is None:
        reason = (
            f"no uploaded dataset with id {dataset.id!r} "
            "(GET /api/v1/datasets lists them; POST one there)"
        )
        return [FieldError("dataset.id", reason)], None
    return [], shape


# -- stage 4: the trials the space bounds -----------------------------------------------------


def usable(spec: StudySpec, broken: set[str]) -> tuple[dict[str, Any], dict[str, SearchParam]]:
    """The fixed values (as trials get them) and the searched parameters that passed their own
    checks: the later checks run on these alone."""
    given = {k: v for k, v in spec.given_fixed.items() if k in PARAMETER_NAMES and k not in broken}
    space = {k: p for k, p in spec.space.items() if k in PARAMETER_NAMES and k not in broken}
    return trial_fixed(given, space), space


def check_combinations(
    spec: StudySpec, fixed: dict[str, Any], space: dict[str, SearchParam], broken: set[str]
) -> list[FieldError]:
    """Every corner of the space, with the fixed values, must be a valid trial (e.g. clipping
    without a threshold is caught here, once, rather than in every trial)."""
    base, corners = _corners(fixed, space)
    seen: set[str] = set()
    errors = []
    for corner in corners:
        try:
            validate_params({**base, **corner})
        except InvalidSpecError as exc:
            for e in exc.errors:
                head = e.field.split(".")[0]
                if e.field in seen or head in broken:
                    continue
                seen.add(e.field)
                hint = "" if head in space else " (fix it in model/training or search it)"
                errors.append(FieldError(_where(e.field, spec), e.reason + hint))
    return errors


def _corners(
    fixed: dict[str, Any], space: dict[str, SearchParam]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The trials that bound the space: a base (the fixed values, each searched parameter at
    its first value) and one change per searched parameter's bound or choice (``[{}]`` when
    nothing is searched)."""
    base = dict(fixed)
    corners: list[dict[str, Any]] = []
    for name, param in space.items():
        values = list(param.choices) if isinstance(param, Categorical) else [param.low, param.high]
        base.setdefault(name, values[0])
        corners += [{name: v} for v in values]
    return base, corners or [{}]


# -- stage 5: what the dataset's shape tells ---------------------------------------------------


def check_for_dataset(
    spec: StudySpec,
    fixed: dict[str, Any],
    space: dict[str, SearchParam],
    broken: set[str],
    shape: DatasetShape,
    max_weights: int | None,
) -> list[FieldError]:
    """A cnn needs image-shaped examples, and the largest model of the space must have at most
    ``max_weights`` weights (a model that cannot fit is refused here, not by every trial running
    out of memory). Skipped where a parameter they depend on is broken."""
    input_shape, n_classes = shape
    images = len(input_shape) in (2, 3)
    errors = []
    if "architecture" not in broken:
        searched = space.get("architecture")
        choices = searched.choices if isinstance(searched, Categorical) else []
        if not images and "cnn" in (choices or [fixed.get("architecture", "mlp")]):
            field = "search_space.architecture" if searched else "model.architecture"
            errors.append(
                FieldError(
                    field,
                    f"'cnn' needs image-shaped examples (height, width[, channels]); this "
                    f"dataset's examples have shape {input_shape}: use 'mlp'",
                )
            )
    if max_weights is None or broken & set(SIZE_PARAMS):
        return errors
    sized = {k: v for k, v in fixed.items() if k in SIZE_PARAMS}
    largest, architecture = 0, "mlp"
    for corner in _size_corners(space):
        try:
            params = validate_params({**sized, **corner})
        except InvalidSpecError:
            continue  # refused by the combinations' check
        if params.architecture == "cnn" and not images:
            continue  # refused above
        weights = count_weights(params, input_shape, n_classes)
        if weights > largest:
            largest, architecture = weights, params.architecture
    if largest > max_weights:
        errors.append(
            FieldError(
                _size_field(spec, space, architecture),
                f"the model would have {largest:,} weights on this dataset "
                f"({'x'.join(map(str, input_shape))} inputs, {n_classes} classes), more than "
                f"{max_weights:,} (HPSEARCH_MAX_MODEL_PARAMS): use fewer or smaller layers",
            )
        )
    return errors


def _size_corners(space: dict[str, SearchParam]) -> Iterator[dict[str, Any]]:
    """Every combination of the searched size parameters' extremes: the weights grow with
    every width, kernel and (from one layer on) the number of dense layers, so the largest model
    is at one of these. More conv blocks can shrink the model (each pools the image the dense
    head sees), so every number of them is tried."""
    axes: list[list[tuple[str, Any]]] = []
    for name in SIZE_PARAMS:
        param = space.get(name)
        if param is None:
            continue
        values: list[Any]
        if isinstance(param, Categorical):
            numeric = [c for c in param.choices if not isinstance(c, (str, bool))]
            values = [min(numeric), max(numeric)] if numeric else list(param.choices)
        else:
            low, high = param.low, param.high
            if isinstance(param, IntRange) and not param.log:  # the highest value it reaches
                high = low + (param.high - low) // param.step * param.step
            step = param.step if isinstance(param, IntRange) and not param.log else 1
            many = name == "conv_blocks" and isinstance(param, IntRange)
            values = list(range(int(low), int(high) + 1, step)) if many else [low, high]
        axes.append([(name, v) for v in values])
    for combination in itertools.product(*axes):
        yield dict(combination)


def _size_field(spec: StudySpec, space: dict[str, SearchParam], architecture: str) -> str:
    """Where to point a model that is too large: the searched width or depth, else the list."""
    names = ("hidden_units", "hidden_layers")
    if architecture == "cnn":
        names = ("conv_filters", "conv_blocks")
    for name in names:
        if name in space:
            return f"search_space.{name}"
    return _where(names[0], spec)


def _where(field: str, spec: StudySpec) -> str:
    """Where the user wrote (or should write) the parameter behind ``field``: the section that
    fixes it, else the search space they gave, else the section it belongs in."""
    head = field.split(".", maxsplit=1)[0]
    if head in spec.model or head in spec.training:
        return f"{'model' if head in spec.model else 'training'}.{field}"
    if spec.search_space is not None and head in spec.search_space:
        return f"search_space.{field}"
    return f"{'model' if head in MODEL_PARAMS else 'training'}.{field}"
