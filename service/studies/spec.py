"""The study spec a user submits: its sections, ranges and defaults (``validation`` checks it
before a study exists).

Checks against the trainer's accepted ranges read the shared contract (``hpsearch.params``), so
the service never imports the trainer. A bad spec is refused once, with every problem it has,
whichever check finds it: each stage runs on what the earlier ones left usable and skips only
what depends on a part found broken (a malformed dataset leaves its shape unknown, so the
model-size check is skipped; the search space is still checked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpsearch.params import (
    LAYER_STACKS,
    MAX_SEED,
    MAX_TRIAL_SECONDS,
    PARAMETER_NAMES,
    LayerStack,
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
TIME_LIMITS = {
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
        return trial_fixed(self.given_fixed, self.space)

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

STACK_OF: dict[str, LayerStack] = {n: s for s in LAYER_STACKS for n in (s.sizes, s.count)}
# A search of each stack that the help below shows: (size low, size high, count low, count high).
_STACK_EXAMPLES = {"hidden_units": (32, 512, 1, 4), "conv_filters": (16, 128, 1, 3)}
# Where pydantic's locations name a union's member rather than a field of the spec.
SEARCH_TAGS = {"float", "int", "categorical"}
CHOICE_TAGS = {"str", "bool", "int", "float"}
# Stand-ins for required fields set aside, so that the rest of the spec can be checked.
STAND_INS: dict[str, Any] = {"name": "set-aside", "dataset": {}, "n_trials": 1}


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


def trial_fixed(given: dict[str, Any], space: dict[str, SearchParam]) -> dict[str, Any]:
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
