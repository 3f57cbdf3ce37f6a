"""The studies' answers: a study with its counts and best trial, its trials, their analysis, and
the spec template the dashboard's form starts from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from hpsearch.lifecycle import StudyStatus, TrialStatus
from hpsearch.results import ParameterCounts
from service.schemas import PageInfo, UtcTimestamp

Direction = Literal["maximize", "minimize"]


class ObjectivePublic(BaseModel):
    """The metric the search optimizes, and which way."""

    metric: str
    direction: Direction


class BestTrial(BaseModel):
    """The best complete trial so far."""

    number: int
    value: float
    params: dict[str, Any]


class StudyPublic(BaseModel):
    """A study: its status, progress, best trial and the spec it was launched with."""

    id: int
    name: str
    status: StudyStatus
    status_reason: str | None = Field(description="why it completed early, failed or stopped")
    n_trials: int = Field(description="the budget")
    trial_counts: dict[TrialStatus, int] = Field(description="trials in each state")
    finished: int = Field(description="trials in a finished state")
    progress: float = Field(description="finished / n_trials")
    searched: list[str] = Field(description="the parameters the search space samples")
    objective: ObjectivePublic
    best_trial: BestTrial | None
    spec: dict[str, Any] = Field(description="the spec as launched, defaults filled in")
    created_at: UtcTimestamp
    started_at: UtcTimestamp | None
    finished_at: UtcTimestamp | None
    change_seq: int = Field(description="grows with every change to the study or its trials")


class StudiesPage(PageInfo):
    """A page of studies, newest first."""

    data: list[StudyPublic]


class TrialPublic(BaseModel):
    """One trial, as lists show it."""

    number: int
    state: TrialStatus
    params: dict[str, Any]
    value: float | None = Field(description="the objective metric, once finished")
    reason: str | None = Field(description="why it was pruned, failed or re-run")
    worker_id: str | None
    attempt: int = Field(description="1 unless a lost worker's trial was re-run")
    epochs_run: int
    duration_seconds: float | None = Field(description="wall time, started to finished")
    train_seconds: float | None = Field(description="training time, as the worker measured it")
    started_at: UtcTimestamp
    finished_at: UtcTimestamp | None
    parameters: ParameterCounts | None = Field(description="the model's weights, once finished")
    change_seq: int


class TrialsPage(PageInfo):
    """A page of a study's trials; ``cursor`` is the study's ``change_seq`` when it was read
    (``?after=cursor`` next time returns only the trials changed since)."""

    data: list[TrialPublic]
    cursor: int


class TrialEpochPublic(BaseModel):
    """One epoch the trial reported, and the answer it got."""

    epoch: int = Field(description="1-based")
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    should_stop: bool = Field(description="the answer to this report told the trial to stop")
    stop_reason: str | None = Field(description="why it was told to stop (pruned, study stopped)")


class TrialDetail(TrialPublic):
    """One trial of a study, with the per-epoch metrics of its latest attempt."""

    params: dict[str, Any] = Field(
        description="the sampled and the fixed values the trainer got (its defaults for the rest)"
    )
    searched: list[str] = Field(description="the names in `params` the search space sampled")
    fixed: list[str] = Field(description="the names in `params` fixed by the spec's model/training")
    epochs_planned: int = Field(description="the spec's epochs per trial")
    epochs: list[TrialEpochPublic]


class SearchedParameter(BaseModel):
    """A searched parameter and its range (``low``, ``high``, ``log``) or ``choices``."""

    name: str
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[Any] | None = None


class TrialColumns(BaseModel):
    """Every trial of the study, column by column, in number order."""

    number: list[int]
    state: list[TrialStatus]
    value: list[float | None]
    epochs_run: list[int]
    params: dict[str, list[Any]] = Field(description="each searched parameter's values")


class Curve(BaseModel):
    """One trial's objective after each epoch (its latest attempt)."""

    number: int
    state: TrialStatus
    values: list[float]


class StudyAnalysis(BaseModel):
    """What the dashboard's plots draw."""

    objective: ObjectivePublic
    epochs: int
    searched: list[SearchedParameter]
    trials: TrialColumns
    curves: list[Curve] = Field(description="the best and the newest trials' curves (<= 300)")
    curves_total: int = Field(description="trials in the study")


class Importance(BaseModel):
    """Each searched parameter's importance (fANOVA), once enough trials completed."""

    ready: bool
    complete: int = Field(description="complete trials so far")
    needed: int = Field(description="complete trials needed before importances are computed")
    importances: dict[str, float]


class ParameterInfo(BaseModel):
    """What a trainer parameter accepts, for the launch form."""

    section: Literal["model", "training"]
    kind: str
    choices: list[Any]
    allowed: str


class SpecTemplate(BaseModel):
    """A starting spec and what each trainer parameter accepts; the trial and study states."""

    spec: dict[str, Any]
    datasets: list[str] = Field(description="the built-in datasets (uploaded ones: /datasets)")
    parameters: dict[str, ParameterInfo]
    trial_states: list[TrialStatus]
    study_statuses: list[StudyStatus]
