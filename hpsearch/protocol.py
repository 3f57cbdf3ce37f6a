"""The worker protocol: the JSON a worker and the service exchange over HTTP.

Shaped like Vizier's client (ask / report / should-stop / complete):

- ``POST /api/v1/workers/ask`` with ``AskRequest`` -> 200 ``Assignment``, or 204 when there is no
  work (the ``Retry-After`` header says when to ask again). Asking again with the same worker id
  returns the same running trial.
- ``POST /api/v1/trials/{trial_id}/report`` with ``EpochReport`` -> ``ReportAnswer``: whether to
  stop (pruned). Repeating a report changes nothing and gets the same answer.
- ``POST /api/v1/trials/{trial_id}/heartbeat`` with ``Heartbeat`` -> ``HeartbeatAnswer``; keeps
  the trial's lease alive while an epoch trains.
- ``GET /api/v1/datasets/{id}/content``: the bytes of an uploaded dataset an assignment names
  (``Assignment.dataset_file``); its ``X-Content-SHA256`` header is the hash to check.
- ``POST /api/v1/trials/{trial_id}/tell`` with ``TellRequest`` -> 200; 409 once the trial is
  finished (a repeated tell changes nothing).
- ``POST /api/v1/trials/{trial_id}/release`` with ``ReleaseRequest`` -> ``ReleaseAnswer``: the
  worker hands an unfinished trial back, because it is stopping (re-run at once by another worker,
  without waiting for the lease to expire) or because the trial's process died (re-run up to the
  spec's ``max_retries``, then failed with the reason).

A lease that is not renewed (by a report or a heartbeat) within ``lease_seconds`` expires: the
trial is then re-run by another worker, with the same parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpsearch.params import TrainingSettings
from hpsearch.results import MAX_EPOCHS, TrialResult

# A stopping worker's grace for its trial (``--stop-grace``, ``HPSEARCH_WORKER_STOP_GRACE``), and
# the most either side accepts.
DEFAULT_STOP_GRACE_SECONDS = 5.0
MAX_STOP_GRACE_SECONDS = 3600.0
# How long a stopping worker's release (hand-back) may wait for the API, in all.
RELEASE_SECONDS = 2.5
# The longest reason a release carries, and that a trial's record keeps of its history.
MAX_REASON_CHARS = 2000

WorkerId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")]
# Attempts are 32-bit in the database: a larger one is a 422, never a database error.
Attempt = Annotated[int, Field(ge=1, le=2**31 - 1)]


class AskRequest(BaseModel):
    """A worker asking for a trial."""

    model_config = ConfigDict(extra="forbid")

    worker_id: WorkerId
    hostname: str | None = Field(None, max_length=255)


class DatasetFile(BaseModel):
    """An uploaded dataset a trial trains on: the worker fetches ``content_path`` once, checks its
    SHA-256 and keeps it in its cache, keyed by the hash."""

    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    format: Literal["npz", "csv"]
    label_column: str | None = Field(None, description="csv: the label column")
    content_path: str = Field(description="relative to the API's URL")


class Assignment(BaseModel):
    """A trial handed to a worker: everything it needs to train, nothing it must look up."""

    trial_id: int
    study_id: int
    study_name: str
    number: int = Field(description="the trial's number within its study, from 0")
    attempt: int = Field(description="1 for the first run; more when re-run after a lost worker")
    params: dict[str, Any]
    dataset: dict[str, Any]
    dataset_file: DatasetFile | None = Field(
        None, description="set when ``dataset`` names an uploaded dataset by id"
    )
    settings: TrainingSettings
    lease_seconds: float
    heartbeat_seconds: float


class EpochReport(BaseModel):
    """One finished epoch of a trial."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    worker_id: WorkerId
    attempt: Attempt
    epoch: int = Field(ge=1, le=MAX_EPOCHS)
    metrics: dict[str, float] = Field(description="finite numbers: a diverged trial tells it")


class ReportAnswer(BaseModel):
    """Whether the trial must stop after this epoch, and why."""

    should_stop: bool
    reason: str | None = None


class Heartbeat(BaseModel):
    """A worker saying it is still training a trial."""

    model_config = ConfigDict(extra="forbid")

    worker_id: WorkerId
    attempt: Attempt


class HeartbeatAnswer(BaseModel):
    """The lease's new expiry, and whether the trial should stop at its next epoch."""

    lease_seconds: float
    should_stop: bool = False


class TellRequest(BaseModel):
    """A trial's final result."""

    model_config = ConfigDict(extra="forbid")

    worker_id: WorkerId
    attempt: Attempt
    result: TrialResult


class ReleaseRequest(BaseModel):
    """A worker handing back a trial it will not finish."""

    model_config = ConfigDict(extra="forbid")

    worker_id: WorkerId
    attempt: Attempt
    cause: Literal["stopping", "crashed"] = Field(
        description="stopping: the worker is shutting down (the trial is re-run, no retry used); "
        "crashed: the trial's process died (killed, out of memory): a retry is used"
    )
    reason: str = Field(
        max_length=MAX_REASON_CHARS, description="what happened, for the trial's record"
    )


class ReleaseAnswer(BaseModel):
    """What became of a released trial."""

    state: Literal["queued", "failed"] = Field(
        description="queued: another attempt will run it; failed: no retry was left"
    )
    retries_left: int = Field(ge=0)
