"""What a trial produces: its state, per-epoch metrics and summary, sent from worker to service."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ObjectiveMetric = Literal["loss", "accuracy", "val_loss", "val_accuracy"]
Direction = Literal["minimize", "maximize"]
METRIC_NAMES: tuple[ObjectiveMetric, ...] = ("loss", "accuracy", "val_loss", "val_accuracy")
# The most epochs a trial may train (``TrainingSettings.epochs``), and so a result may hold.
MAX_EPOCHS = 10_000


class TrialState(StrEnum):
    """How a trial ended."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


class EpochMetrics(BaseModel):
    """The metrics after one epoch (1-based), as Keras reports them, and the epoch's wall time."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    epoch: int = Field(ge=1, le=MAX_EPOCHS)
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float = Field(ge=0.0)

    def value(self, metric: ObjectiveMetric) -> float:
        """The value of one of the four metrics."""
        return float(getattr(self, metric))


class ParameterCounts(BaseModel):
    """The model's weights, as ``model.summary()`` counts them."""

    model_config = ConfigDict(frozen=True)

    total: int
    trainable: int
    non_trainable: int


class TrialResult(BaseModel):
    """The outcome of one trial.

    ``best_value`` is the best objective over the epochs run and ``final_value`` the last one;
    both are ``None`` when no epoch finished with a finite value (a diverged or failed trial).
    """

    # Finite numbers only: a trial that diverged says so in its state, and the database (and
    # the JSON of every answer that shows the trial) holds no NaN or infinity.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    state: TrialState
    reason: str | None = None
    objective: ObjectiveMetric = "val_accuracy"
    direction: Direction = "maximize"
    epochs: list[EpochMetrics] = Field(default_factory=list, max_length=MAX_EPOCHS)
    epochs_run: int = Field(0, ge=0, le=MAX_EPOCHS)
    best_value: float | None = None
    final_value: float | None = None
    seconds: float = 0.0
    parameters: ParameterCounts | None = None
