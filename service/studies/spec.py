"""The study spec a user submits, and every check it must pass before a study exists.

Checks against the trainer's accepted ranges read the shared contract (``hpsearch.params``), so
the service never imports the trainer. A bad spec is refused once, with every problem it has,
whichever check finds it: each stage runs on what the earlier ones left usable and skips only
what depends on a part found broken (a malformed dataset leaves its shape unknown, so the
model-size check is skipped; the search space is still checked).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpsearch.datasets import validate_dataset
from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic
from hpsearch.params import (
    LAYER_STACKS,
    MAX_SEED,
    MAX_TRIAL_SECONDS,
    PARAMETER_NAMES,
    Domain,
    LayerStack,
    count_weights,
    search_domain,
    validate_params,
)
from hpsearch.results import MAX_EPOCHS, Direction, ObjectiveMetric

MODEL_PARAMS = (
    "architecture",
    "hidden_units",
    "hidden_layers",
    "conv_filters",
    "conv_blocks",
    "kernel_size",
    "activation",
    "initializer",
    "batch_norm",
    "input_batch_norm",
    "bn_momentum",
    "dropout",
)
TRAINING_PARAMS = (
    "learning_rate",
    "optimizer",
    "momentum",
    "weight_decay",
    "clip_mode",
    "clip_threshold",
    "batch_size",
)
assert set(MODEL_PARAMS) | set(TRAINING_PARAMS) == set(PARAMETER_NAMES)
# What the model's size depends on: the model-size limit is checked over their corners.
SIZE_PARAMS = (
    "architecture",
    "hidden_units",
    "hidden_layers",
    "conv_filters",
    "conv_blocks",
    "kernel_size",
    "batch_norm",
    "input_batch_norm",
)
# (one example's shape, number of classes)
DatasetShape = tuple[tuple[int, ...], int]

# The mission's four hyperparameters (and the clipping mode), searched when no space is given.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "bn_momentum": {"type": "float", "low": 0.9, "high": 0.999},
    "clip_mode": {"type": "categorical", "choices": ["value", "norm"]},
    "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
}


# Every number of a spec has a maximum that the whole system can honour. A study's time limit
# is at most a year: its deadline is a datetime (a limit of 1e12 s would pass year 9999), and a
# longer limit is no limit in practice (leave it out). A trial's is at most 7 days
# (``hpsearch.params.MAX_TRIAL_SECONDS``, what every wait of a worker can express).
MAX_STUDY_SECONDS = 365 * 24 * 3600
# Trials per study (and trial counts of samplers and pruners): hps_studies.n_trials is 32-bit;
# HPSEARCH_MAX_TRIALS (default 10,000) is the configured, lower, maximum.
MAX_N_TRIALS = 1_000_000
# A float range searched in steps may hold at most this many: more is a continuous range in
# practice (leave step out), and Optuna's exact decimal arithmetic on the range gives up at 1e28.
MAX_FLOAT_STEPS = 1_000_000
# Halving rates of the hyperband and successive-halving pruners.
MAX_REDUCTION_FACTOR = 100
# What the time limits are, in words, for their refusals.
_TIME_LIMITS = {
    "timeout_seconds": "365 days: leave it out for no limit",
    "trial_timeout_seconds": "7 days",
}
# The validation context of a submitted spec (``parse_study_spec``): values past a maximum are
# refused. Without it (a spec read back from the database), they are lowered to the maximum.
SUBMITTED = {"submitted": True}


def _maximum(metadata: list[Any]) -> float | None:
    return next((float(m.le) for m in metadata if isinstance(m, annotated_types.Le)), None)  # type: ignore[arg-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _stored_within_maxima(cls, data: Any, info: ValidationInfo) -> Any:
        """A stored spec may predate a maximum (a trial timeout of 30 days, accepted once, and
        which no worker could wait for): each value past its field's maximum is read as that
        maximum, so that the study still loads, lists, resumes and runs. A submitted spec
        (``SUBMITTED``) is refused instead."""
        if not isinstance(data, dict) or (info.context or {}).get("submitted"):
            return data
        lowered = dict(data)
        for name, field in cls.model_fields.items():
            value, limit = data.get(name), _maximum(field.metadata)
            if limit is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value > limit:
                lowered[name] = int(limit) if isinstance(value, int) else limit
        return lowered


class FloatRange(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class IntRange(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)


class Categorical(_Strict):
    type: Literal["categorical"]
    choices: list[str | bool | int | float] = Field(min_length=1, max_length=1000)


SearchParam = Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]


class Objective(_Strict):
    metric: ObjectiveMetric = "val_accuracy"
    direction: Direction | None = None

    @property
    def resolved_direction(self) -> Direction:
        """The direction given, else minimize for losses and maximize for accuracies."""
        return self.direction or ("minimize" if "loss" in self.metric else "maximize")


class SamplerSpec(_Strict):
    type: Literal["random", "tpe", "qmc"] = "random"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n_startup_trials: int = Field(
        10, ge=0, le=MAX_N_TRIALS, description="tpe: random trials before modelling"
    )
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="qmc only")


class PrunerSpec(_Strict):
    type: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(
        5, ge=0, le=MAX_N_TRIALS, description="median: trials before any pruning"
    )
    n_warmup_steps: int = Field(
        1, ge=0, le=MAX_EPOCHS, description="median: epochs before a trial can be pruned"
    )
    interval_steps: int = Field(1, ge=1, le=MAX_EPOCHS, description="median")
    min_resource: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="hyperband, successive_halving: epochs"
    )
    reduction_factor: int = Field(
        3, ge=2, le=MAX_REDUCTION_FACTOR, description="hyperband, successive_halving"
    )


class StudySpec(_Strict):
    """A study as submitted (``POST /api/v1/studies``). See the README for an example.

    Validated with ``context=SUBMITTED`` (``parse_study_spec``), a value past its maximum is
    refused; validated without (a stored spec, read back), it is read as the maximum.
    """

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    search_space: dict[str, SearchParam] | None = None
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    n_trials: int = Field(ge=1, le=MAX_N_TRIALS)
    timeout_seconds: float | None = Field(
        None, gt=0, le=MAX_STUDY_SECONDS, description="of the whole study: at most 365 days"
    )
    trial_timeout_seconds: float | None = Field(
        None, gt=0, le=MAX_TRIAL_SECONDS, description="of each trial: at most 7 days"
    )
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="also accepted as training.epochs"
    )
    max_retries: int = Field(
        1, ge=0, le=10, description="re-runs of a trial whose process died (killed, out of memory)"
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_is_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError('must be an object such as {"name": "digits"}')
        return value

    # -- derived -------------------------------------------------------------------------------

    @property
    def space(self) -> dict[str, SearchParam]:
        """The searched parameters: as given, or the default four when none are given."""
        if self.search_space is not None:
            return self.search_space
        return {k: _SEARCH_PARAM.validate_python(v) for k, v in DEFAULT_SEARCH_SPACE.items()}

    @property
    def given_fixed(self) -> dict[str, Any]:
        """The trainer parameters fixed in ``model`` and ``training``, as written."""
        fixed = {**self.model, **self.training}
        fixed.pop("epochs", None)
        return fixed

    @property
    def fixed_params(self) -> dict[str, Any]:
        """The fixed parameters as every trial gets them (its sampled values added): as
        written, except that a layer list whose size is searched gives only its length
        (``hidden_layers``), the half of it that the search does not sample."""
        return _trial_fixed(self.given_fixed, self.space)

    @property
    def n_epochs(self) -> int:
        """Epochs per trial (``training.epochs`` or ``epochs``; default 5)."""
        return int(self.training.get("epochs", self.epochs or 5))


if TYPE_CHECKING:
    StudySpecBody = Any
else:
    # The body of ``POST /api/v1/studies``: documented as a StudySpec, handed over as it was
    # sent, so that ``parse_study_spec`` answers every problem at once (FastAPI's own
    # validation would answer the spec's shape alone, and stop there).
    StudySpecBody = SkipValidation[StudySpec]

from pydantic import TypeAdapter  # noqa: E402  (after SearchParam is defined)

_SEARCH_PARAM: TypeAdapter[SearchParam] = TypeAdapter(SearchParam)

_STACK_OF: dict[str, LayerStack] = {n: s for s in LAYER_STACKS for n in (s.sizes, s.count)}
# A search of each stack that the help below shows: (size low, size high, count low, count high).
_STACK_EXAMPLES = {"hidden_units": (32, 512, 1, 4), "conv_filters": (16, 128, 1, 3)}
# Where pydantic's locations name a union's member rather than a field of the spec.
_SEARCH_TAGS = {"float", "int", "categorical"}
_CHOICE_TAGS = {"str", "bool", "int", "float"}
# Stand-ins for required fields set aside, so that the rest of the spec can be checked.
_STAND_INS: dict[str, Any] = {"name": "set-aside", "dataset": {}, "n_trials": 1}


def layer_search_help(stack: LayerStack) -> str:
    """The one answer to every way of searching a layer stack but the one that works."""
    low, high, fewest, most = _STACK_EXAMPLES[stack.sizes]
    return (
        f"search the {stack.network}'s {stack.layer}s as two integers: "
        f'"{stack.sizes}": {{"type": "int", "low": {low}, "high": {high}, "log": true}} is the '
        f"{stack.unit} of every {stack.layer}, and "
        f'"{stack.count}": {{"type": "int", "low": {fewest}, "high": {most}}} how many there '
        f"are; the one not searched comes from model.{stack.sizes} (its first entry, or its "
        f"length). A list of {stack.unit} per {stack.layer} is fixed in model.{stack.sizes}, "
        "not searched"
    )


def parse_study_spec(
    raw: Any,
    max_trials: int,
    max_epochs: int,
    max_weights: int | None = None,
    uploaded_shape: Callable[[str], DatasetShape | None] | None = None,
) -> StudySpec:
    """Validate a submitted spec completely, or raise ``InvalidSpecError`` listing every problem,
    whichever stage finds it: its shape, the trainer's ranges, the budget, the dataset, the
    combinations of fixed and searched values, and what the dataset's shape tells (a cnn needs
    images; the largest model must have at most ``max_weights`` weights, when given).

    ``uploaded_shape(id)`` gives an uploaded dataset's shape (``None``: no such dataset); without
    it, the checks that need an uploaded dataset's shape are not made.
    """
    if not isinstance(raw, dict):
        raise InvalidSpecError([FieldError("(body)", "must be a JSON object")])
    spec, errors, broken = _parse_structure(raw)
    if spec is None:
        raise InvalidSpecError(_unique(errors))
    for check in (_check_sections, _check_search_space):
        found = check(spec)
        errors += found
        broken |= _parameters_at_fault(found)
    errors += _check_budget(spec, max_trials, max_epochs, broken)
    found, shape = _check_dataset(spec, broken, uploaded_shape)
    errors += found
    fixed, space = _usable(spec, broken)
    errors += _check_combinations(spec, fixed, space, broken)
    if shape is not None:
        errors += _check_for_dataset(spec, fixed, space, broken, shape, max_weights)
    if errors:
        raise InvalidSpecError(_unique(errors))
    return spec


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))


# -- stage 1: the spec's shape --------------------------------------------------------------


def _parse_structure(raw: dict[str, Any]) -> tuple[StudySpec | None, list[FieldError], set[str]]:
    """The spec's shape (pydantic) with every error in it, and what those errors make unusable:
    each part at fault is set aside (a required field gets a stand-in) and the rest parsed
    again, so that the later checks can still run on it."""
    errors: list[FieldError] = []
    broken: set[str] = set()
    candidate = dict(raw)
    for _ in range(3):  # set aside what failed; a second pass is expected to pass
        try:
            return StudySpec.model_validate(candidate, context=SUBMITTED), errors, broken
        except ValidationError as exc:
            details = exc.errors(include_url=False)
            parts = {_part_of(detail["loc"], candidate) for detail in details}
            for detail, error in zip(details, field_errors_from_pydantic(exc), strict=True):
                errors.append(_structure_error(detail, error, raw))
            if () in parts:
                return None, errors, broken
            for part in sorted(parts, key=len, reverse=True):  # entries before whole sections
                broken |= _broken_by(part)
                _set_aside(candidate, part)
    return None, errors, broken


def _structure_error(detail: Any, error: FieldError, raw: dict[str, Any]) -> FieldError:
    """``error`` named as the user wrote the field (no union members in its path), or the
    layer-search help for any search of a layer stack but an ``int`` one."""
    loc = [str(p) for p in detail["loc"]]
    if len(loc) == 1 and loc[0] in _TIME_LIMITS and detail["type"] == "less_than_equal":
        limit = detail["ctx"]["le"]
        return FieldError(
            loc[0],
            f"at most {limit:,.0f} seconds ({_TIME_LIMITS[loc[0]]}), got {_show(detail['input'])}",
        )
    if loc[:1] == ["search_space"] and len(loc) >= 2 and loc[1] in _STACK_OF:
        entry = raw["search_space"].get(loc[1])  # a dict: its entries have errors
        if not (isinstance(entry, dict) and entry.get("type") == "int"):
            return FieldError(f"search_space.{loc[1]}", layer_search_help(_STACK_OF[loc[1]]))
    if loc[:1] == ["search_space"] and len(loc) >= 3 and loc[2] in _SEARCH_TAGS:
        del loc[2]
        if len(loc) == 5 and loc[2] == "choices" and loc[4] in _CHOICE_TAGS:
            got = detail.get("input")
            return FieldError(
                ".".join(loc[:4]), f"must be a string, a boolean or a number (got {got!r})"
            )
    return FieldError(".".join(loc) or error.field, error.reason)


def _part_of(loc: tuple[Any, ...], candidate: dict[str, Any]) -> tuple[str, ...]:
    """The part of the spec an error is in: a section's entry, or a top-level field."""
    if not loc:
        return ()
    head = str(loc[0])
    section = candidate.get(head)
    if (
        head in ("search_space", "objective", "sampler", "pruner")
        and len(loc) >= 2
        and isinstance(section, dict)
        and loc[1] in section
    ):
        return head, str(loc[1])
    return (head,)


def _broken_by(part: tuple[str, ...]) -> set[str]:
    """What the later checks must not rely on once ``part`` is set aside: parameter names (all
    of a section's for a whole section), or the top-level field's name."""
    if part[0] == "search_space":
        return {part[1]} if len(part) == 2 else set(PARAMETER_NAMES)
    if part == ("model",):
        return set(MODEL_PARAMS)
    if part == ("training",):
        return set(TRAINING_PARAMS)
    return {part[0]}


def _set_aside(candidate: dict[str, Any], part: tuple[str, ...]) -> None:
    if len(part) == 2:
        section = dict(candidate[part[0]])
        section.pop(part[1], None)
        candidate[part[0]] = section
    elif part[0] in _STAND_INS:
        candidate[part[0]] = _STAND_INS[part[0]]
    elif part[0] == "search_space":
        candidate[part[0]] = {}  # not the default space: what is searched is unknown
    else:
        candidate.pop(part[0], None)


def _parameters_at_fault(errors: list[FieldError]) -> set[str]:
    """The parameters that ``errors`` (of the sections and search-space checks) concern."""
    out = set()
    for e in errors:
        parts = e.field.split(".")
        if len(parts) > 1 and parts[1] in PARAMETER_NAMES:
            out.add(parts[1])
    return out


# -- stage 2: each fixed and searched value against the trainer's ranges ----------------------


def _check_sections(spec: StudySpec) -> list[FieldError]:
    errors = []
    for section, allowed in (("model", MODEL_PARAMS), ("training", (*TRAINING_PARAMS, "epochs"))):
        for name in getattr(spec, section):
            if name in allowed:
                continue
            if name in PARAMETER_NAMES:
                other = "training" if section == "model" else "model"
                reason = f"belongs in {other}, not {section}"
            else:
                reason = f"unknown parameter; known: {', '.join(allowed)}"
            errors.append(FieldError(f"{section}.{name}", reason))
    fixed = spec.given_fixed
    if fixed:
        try:
            validate_params(fixed)
        except InvalidSpecError as exc:
            for e in exc.errors:
                head = e.field.split(".")[0]
                if head not in PARAMETER_NAMES:
                    continue  # an unknown name: reported above, in the section it was given
                section = "model" if head in spec.model else "training"
                errors.append(FieldError(f"{section}.{e.field}", e.reason))
    return errors


def _check_search_space(spec: StudySpec) -> list[FieldError]:
    errors: list[FieldError] = []
    fixed = spec.given_fixed
    for name, param in (spec.search_space or {}).items():
        where = f"search_space.{name}"
        if name not in PARAMETER_NAMES:
            errors.append(
                FieldError(where, "unknown parameter; known: " + ", ".join(PARAMETER_NAMES))
            )
            continue
        stack = _STACK_OF.get(name)
        if stack is not None and not isinstance(param, IntRange):
            errors.append(FieldError(where, layer_search_help(stack)))
            continue
        # A fixed list beside its searched size gives the layers' count: not a conflict.
        gives_count = stack is not None and isinstance(fixed.get(name), list)
        if name in fixed and not gives_count:
            section = "model" if name in MODEL_PARAMS else "training"
            errors.append(FieldError(where, f"both fixed (in {section}) and searched; remove one"))
        domain = search_domain(name)
        if isinstance(param, Categorical):
            errors += _check_choices(where, param, domain)
            continue
        if domain.kind not in ("float", "int"):
            errors.append(
                FieldError(
                    f"{where}.type",
                    f"{name} is not numeric: use "
                    f"'categorical' with choices from {domain.describe()}",
                )
            )
            continue
        if domain.kind == "int" and isinstance(param, FloatRange):
            errors.append(FieldError(f"{where}.type", f"{name} is an integer: use 'int'"))
            continue
        errors += _check_range(where, param, domain)
    return errors


def _check_choices(where: str, param: Categorical, domain: Domain) -> list[FieldError]:
    """Each choice in the parameter's domain, and listed once: Optuna finds a sampled choice by
    equality, so of two equal choices (``1`` and ``1.0``, ``1`` and ``true``) it only ever
    returns the first."""
    errors = []
    seen: dict[Any, Any] = {}
    for choice in param.choices:
        if domain.kind in ("categorical", "bool") and not _one_of(choice, domain.choices):
            reason = f"{_show(choice)} is not allowed; {domain.describe()}"
            errors.append(FieldError(f"{where}.choices", reason))
        elif domain.kind in ("float", "int") and (
            isinstance(choice, (str, bool)) or not domain.contains(choice)
        ):
            errors.append(
                FieldError(f"{where}.choices", f"{_show(choice)} is outside {domain.describe()}")
            )
        elif choice in seen:
            errors.append(
                FieldError(
                    f"{where}.choices",
                    f"{_show(choice)} is listed twice (it equals {_show(seen[choice])}): Optuna "
                    "would only ever sample the first; list each value once",
                )
            )
        else:
            seen[choice] = choice
    return errors


def _one_of(choice: Any, allowed: tuple[Any, ...]) -> bool:
    """``choice`` is one of ``allowed``, of the same type (``1`` equals ``True``, but is not it)."""
    return any(choice == a and type(choice) is type(a) for a in allowed)


def _check_range(where: str, param: FloatRange | IntRange, domain: Domain) -> list[FieldError]:
    """The range's bounds in the domain, and a range Optuna searches as written: it would
    silently lower ``high`` to the last whole step (to ``low`` itself for a step larger than
    the range), and a log-scale integer search takes every integer."""
    errors = []
    if param.low >= param.high:
        errors.append(
            FieldError(
                f"{where}.low", f"must be below high ({_show(param.high)}), got {_show(param.low)}"
            )
        )
    if param.log and param.low <= 0:
        errors.append(
            FieldError(f"{where}.low", f"must be > 0 on a log scale, got {_show(param.low)}")
        )
    stepped = param.step is not None and not (isinstance(param, IntRange) and param.step == 1)
    if param.log and stepped:
        errors.append(
            FieldError(
                f"{where}.step",
                "cannot be combined with log: a log scale has no fixed step; remove step "
                "(or log, to search in steps)",
            )
        )
    for bound in ("low", "high"):
        value = getattr(param, bound)
        if not domain.contains(value):
            errors.append(
                FieldError(
                    f"{where}.{bound}",
                    f"{_show(value)} is outside what the trainer accepts: {domain.describe()}",
                )
            )
    if stepped and not param.log and param.low < param.high and not errors:
        problem = _step_problem(param, domain)
        if problem:
            errors.append(FieldError(f"{where}.step", problem))
    return errors


def _step_problem(param: FloatRange | IntRange, domain: Domain) -> str | None:
    """Why Optuna would not search ``param``'s range in its steps as written, and what to write
    instead; ``None`` when it would. Float ranges are measured as Optuna measures them, in
    decimal (``_adjust_discrete_uniform_high``: 0.5 holds five steps of 0.1)."""
    assert param.step is not None
    if isinstance(param, FloatRange):
        low, high, step = (Decimal(str(v)) for v in (param.low, param.high, param.step))
    else:
        low, high, step = Decimal(param.low), Decimal(param.high), Decimal(param.step)
    span = high - low
    shown = f"[{_show(param.low)}, {_show(param.high)}]"
    if step > span:
        return (
            f"{_show(param.step)} is larger than the range {shown}: Optuna would search "
            f"{_show(param.low)} alone; use a step of at most {_decimal(span)} that divides "
            "high - low, or leave step out"
        )
    if isinstance(param, FloatRange) and span / step > MAX_FLOAT_STEPS:
        return (
            f"{_show(param.step)} cuts the range {shown} into more than {MAX_FLOAT_STEPS:,} "
            "steps: leave step out to search the range continuously"
        )
    if span % step:
        below = low + span // step * step
        above = below + step
        instead = f"high {_decimal(below)}"
        if domain.contains(float(above) if isinstance(param, FloatRange) else int(above)):
            instead += f" or {_decimal(above)}"
        return (
            f"the range {shown} is not a whole number of steps of {_show(param.step)}: Optuna "
            f"would search only up to {_decimal(below)}; make it {instead} (low plus a multiple "
            "of step), or use a step that divides high - low"
        )
    return None


def _decimal(value: Decimal) -> str:
    return f"{float(value):g}"


def _show(value: Any) -> str:
    """A value as refusals quote it: numbers short whatever their size (an integer past 1e308
    has no float), strings cut at 40 characters."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 42 else f"{text[:40]}…{text[-1]} ({len(text) - 2} characters)"
    if isinstance(value, float):
        text = repr(value)  # 5.0 as written, not 5
        return text if len(text) <= 12 else f"{value:g}"
    digits = str(abs(value))
    if len(digits) <= 16:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


# -- stage 3: the budget and the dataset ------------------------------------------------------


def _check_budget(
    spec: StudySpec, max_trials: int, max_epochs: int, broken: set[str]
) -> list[FieldError]:
    errors = []
    if "n_trials" not in broken and spec.n_trials > max_trials:
        errors.append(
            FieldError(
                "n_trials",
                f"at most {max_trials} (configured maximum, HPSEARCH_MAX_TRIALS), "
                f"got {spec.n_trials}",
            )
        )
    max_epochs = min(max_epochs, MAX_EPOCHS)  # what a trial's settings accept, whatever is set
    epochs = spec.training.get("epochs", spec.epochs)
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= max_epochs
    ):
        errors.append(
            FieldError(
                "training.epochs",
                f"must be an integer in [1, {max_epochs}] (HPSEARCH_MAX_EPOCHS), "
                f"got {_show(epochs)}",
            )
        )
    elif "pruner" not in broken:
        errors += _check_pruner(spec.pruner, spec.n_epochs)
    if "epochs" in spec.training and spec.epochs is not None:
        errors.append(FieldError("epochs", "given both here and as training.epochs"))
    return errors


def _check_pruner(pruner: PrunerSpec, epochs: int) -> list[FieldError]:
    """A pruner whose first decision comes after the last epoch would silently prune nothing."""
    if pruner.type in ("hyperband", "successive_halving"):
        name, value = "min_resource", pruner.min_resource
    elif pruner.type == "median":
        name, value = "n_warmup_steps", pruner.n_warmup_steps
    else:
        return []
    if value <= epochs:
        return []
    return [
        FieldError(
            f"pruner.{name}",
            f"{value} is more than the {epochs} epochs a trial trains: no trial could ever be "
            f'pruned; use at most {epochs}, or "type": "none" for no pruning',
        )
    ]


def _check_dataset(
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


def _usable(spec: StudySpec, broken: set[str]) -> tuple[dict[str, Any], dict[str, SearchParam]]:
    """The fixed values (as trials get them) and the searched parameters that passed their own
    checks: the later checks run on these alone."""
    given = {k: v for k, v in spec.given_fixed.items() if k in PARAMETER_NAMES and k not in broken}
    space = {k: p for k, p in spec.space.items() if k in PARAMETER_NAMES and k not in broken}
    return _trial_fixed(given, space), space


def _trial_fixed(given: dict[str, Any], space: dict[str, SearchParam]) -> dict[str, Any]:
    """``given`` as trials get it: a fixed layer list whose size is searched gives its length
    as the layers' count (unless the count is fixed or searched too)."""
    out = dict(given)
    for stack in LAYER_STACKS:
        sizes = out.get(stack.sizes)
        if stack.sizes in space and isinstance(sizes, list):
            del out[stack.sizes]
            if stack.count not in out and stack.count not in space:
                out[stack.count] = len(sizes)
    return out


def _check_combinations(
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


def _check_for_dataset(
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
