"""The states a trial and a study go through: the one spelling of each, for the service, the
client's commands and the dashboard (which reads them from ``GET /api/v1/spec/template``)."""

from __future__ import annotations

from enum import StrEnum

from hpsearch.results import TrialState


class TrialStatus(StrEnum):
    """A trial runs (leased to a worker, or waiting to be re-let), then ends in one of the
    trainer's states (:class:`hpsearch.results.TrialState`)."""

    RUNNING = "running"
    COMPLETE = TrialState.COMPLETE.value
    PRUNED = TrialState.PRUNED.value
    DIVERGED = TrialState.DIVERGED.value
    TIMED_OUT = TrialState.TIMED_OUT.value
    FAILED = TrialState.FAILED.value


FINISHED_TRIAL_STATUSES = tuple(TrialStatus(state.value) for state in TrialState)


class StudyStatus(StrEnum):
    """Queued until its first trial is handed out, running until its budget is spent (or its
    deadline passes), then completed; stopped by a user (and resumable); failed when its first
    trials all fail for good."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE_STUDY_STATUSES = (StudyStatus.QUEUED, StudyStatus.RUNNING)
