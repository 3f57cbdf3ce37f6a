"""The study spec a user submits, and every check it must pass before a study exists.

Checks against the trainer's accepted ranges read the shared contract (``hpsearch.params``), so
the service never imports the trainer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpsearch.datasets import validate_dataset
from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic
from hpsearch.params import PARAMETER_NAMES, count_weights, parameter_domain, validate_params
from hpsearch.results import Direction, ObjectiveMetric

MODEL_PARAMS = (
    "architecture",
    "hidden_units",
    "conv_filters",
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

# The mission's four hyperparameters (and the clipping mode), searched when no space is given.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "bn_momentum": {"type": "float", "low": 0.9, "high": 0.999},
    "clip_mode": {"type": "categorical", "choices": ["value", "norm"]},
    "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n_startup_trials: int = Field(10, ge=0, description="tpe: random trials before modelling")
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="qmc only")


class PrunerSpec(_Strict):
    type: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="median: trials before any pruning")
    n_warmup_steps: int = Field(1, ge=0, description="median: epochs before a trial can be pruned")
    interval_steps: int = Field(1, ge=1, description="median")
    min_resource: int = Field(1, ge=1, description="hyperband, successive_halving: epochs")
    reduction_factor: int = Field(3, ge=2, description="hyperband, successive_halving")


class StudySpec(_Strict):
    """A study as submitted (``POST /api/v1/studies``). See the README for an example."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    search_space: dict[str, SearchParam] | None = None
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    n_trials: int = Field(ge=1)
    timeout_seconds: float | None = Field(None, gt=0, description="of the whole study")
    trial_timeout_seconds: float | None = Field(None, gt=0, description="of each trial")
    epochs: int | None = Field(None, ge=1, description="also accepted as training.epochs")

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
    def fixed_params(self) -> dict[str, Any]:
        """The trainer parameters fixed in ``model`` and ``training``."""
        fixed = {**self.model, **self.training}
        fixed.pop("epochs", None)
        return fixed

    @property
    def n_epochs(self) -> int:
        """Epochs per trial (``training.epochs`` or ``epochs``; default 5)."""
        return int(self.training.get("epochs", self.epochs or 5))


from pydantic import TypeAdapter  # noqa: E402  (after SearchParam is defined)

_SEARCH_PARAM: TypeAdapter[SearchParam] = TypeAdapter(SearchParam)


def parse_study_spec(raw: Any, max_trials: int, max_epochs: int) -> StudySpec:
    """Validate a submitted spec completely, or raise ``InvalidSpecError`` listing every problem."""
    if not isinstance(raw, dict):
        raise InvalidSpecError([FieldError("(body)", "must be a JSON object")])
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSpecError(field_errors_from_pydantic(exc)) from None
    errors: list[FieldError] = []
    errors += _check_sections(spec)
    errors += _check_search_space(spec)
    if spec.n_trials > max_trials:
        errors.append(
            FieldError(
                "n_trials",
                f"at most {max_trials} (configured maximum, HPSEARCH_MAX_TRIALS), "
                f"got {spec.n_trials}",
            )
        )
    epochs = spec.training.get("epochs", spec.epochs)
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= max_epochs
    ):
        errors.append(
            FieldError(
                "training.epochs",
                f"must be an integer in [1, {max_epochs}] (HPSEARCH_MAX_EPOCHS), got {epochs!r}",
            )
        )
    if "epochs" in spec.training and spec.epochs is not None:
        errors.append(FieldError("epochs", "given both here and as training.epochs"))
    try:
        dataset = validate_dataset(spec.dataset)
        if dataset.path is not None:
            errors.append(
                FieldError(
                    "dataset.path",
                    "files are not read by path through the API: name a built-in dataset, "
                    "or upload the file and give its id",
                )
            )
    except InvalidSpecError as exc:
        errors += exc.errors
    if not errors:
        errors += _check_combinations(spec)
    if errors:
        raise InvalidSpecError(errors)
    return spec


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
    fixed = spec.fixed_params
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
    fixed = spec.fixed_params
    for name, param in (spec.search_space or {}).items():
        where = f"search_space.{name}"
        if name not in PARAMETER_NAMES:
            errors.append(
                FieldError(where, "unknown parameter; known: " + ", ".join(PARAMETER_NAMES))
            )
            continue
        if name in fixed:
            section = "model" if name in MODEL_PARAMS else "training"
            errors.append(FieldError(where, f"both fixed (in {section}) and searched; remove one"))
        domain = parameter_domain(name)
        if isinstance(param, Categorical):
            if domain.kind == "int_list":
                errors.append(
                    FieldError(
                        where,
                        "lists cannot be searched as categorical choices yet; fix it in model",
                    )
                )
            for choice in param.choices:
                if domain.kind in ("categorical", "bool") and choice not in domain.choices:
                    errors.append(
                        FieldError(
                            f"{where}.choices", f"{choice!r} is not allowed; {domain.describe()}"
                        )
                    )
                elif domain.kind in ("float", "int") and (
                    isinstance(choice, (str, bool)) or not domain.contains(float(choice))
                ):
                    errors.append(
                        FieldError(f"{where}.choices", f"{choice!r} is outside {domain.describe()}")
                    )
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
        if param.low >= param.high:
            errors.append(
                FieldError(
                    f"{where}.low", f"must be below high ({param.high:g}), got {param.low:g}"
                )
            )
        if param.log and param.low <= 0:
            errors.append(
                FieldError(f"{where}.low", f"must be > 0 on a log scale, got {param.low:g}")
            )
        if param.log and isinstance(param, FloatRange) and param.step is not None:
            errors.append(FieldError(f"{where}.step", "cannot be combined with log"))
        for bound in ("low", "high"):
            value = getattr(param, bound)
            if not domain.contains(value):
                errors.append(
                    FieldError(
                        f"{where}.{bound}",
                        f"{value:g} is outside what the trainer accepts: {domain.describe()}",
                    )
                )
    return errors


def _check_combinations(spec: StudySpec) -> list[FieldError]:
    """Every corner of the space, with the fixed values, must be a valid trial (e.g. clipping
    without a threshold is caught here, once, rather than in every trial)."""
    space = spec.space
    base, corners = _corners(spec)
    seen: set[str] = set()
    errors = []
    for corner in corners:
        try:
            validate_params({**base, **corner})
        except InvalidSpecError as exc:
            for e in exc.errors:
                if e.field in seen:
                    continue
                seen.add(e.field)
                hint = "" if e.field in space else " (fix it in model/training or search it)"
                errors.append(FieldError(_where(e.field, spec), e.reason + hint))
    return errors


def check_for_dataset(
    spec: StudySpec, input_shape: tuple[int, ...], n_classes: int, max_weights: int
) -> list[FieldError]:
    """What only the dataset's shape can tell: a cnn needs image-shaped examples, and the
    largest model any corner of the space builds must have at most ``max_weights`` weights (a
    model that cannot fit is refused here, not by every trial running out of memory)."""
    base, corners = _corners(spec)
    largest, where = 0, "model.hidden_units"
    for corner in corners:
        params = validate_params({**base, **corner})
        if params.architecture == "cnn" and len(input_shape) not in (2, 3):
            field = (
                "search_space.architecture" if "architecture" in corner else "model.architecture"
            )
            return [
                FieldError(
                    field,
                    f"'cnn' needs image-shaped examples (height, width[, channels]); this "
                    f"dataset's examples have shape {input_shape}: use 'mlp'",
                )
            ]
        weights = count_weights(params, input_shape, n_classes)
        if weights > largest:
            largest = weights
            where = "model.hidden_units" if params.architecture == "mlp" else "model.conv_filters"
    if largest <= max_weights:
        return []
    return [
        FieldError(
            where,
            f"the model would have {largest:,} weights on this dataset "
            f"({'x'.join(map(str, input_shape))} inputs, {n_classes} classes), more than "
            f"{max_weights:,} (HPSEARCH_MAX_MODEL_PARAMS): use fewer or smaller layers",
        )
    ]


def _corners(spec: StudySpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The trials that bound the space: a base (the fixed values, each searched parameter at
    its first value) and one change per searched parameter's bound or choice (``[{}]`` when
    nothing is searched)."""
    base = dict(spec.fixed_params)
    corners: list[dict[str, Any]] = []
    for name, param in spec.space.items():
        values = list(param.choices) if isinstance(param, Categorical) else [param.low, param.high]
        base.setdefault(name, values[0])
        corners += [{name: v} for v in values]
    return base, corners or [{}]


def _where(field: str, spec: StudySpec) -> str:
    """Where the user wrote (or should write) the parameter behind ``field``: the section that
    fixes it, else the search space they gave, else the section it belongs in."""
    head = field.split(".", maxsplit=1)[0]
    if head in spec.model or head in spec.training:
        return f"{'model' if head in spec.model else 'training'}.{field}"
    if spec.search_space is not None and head in spec.search_space:
        return f"search_space.{field}"
    return f"{'model' if head in MODEL_PARAMS else 'training'}.{field}"
