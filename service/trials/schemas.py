"""The trials' answers that ``hpsearch.protocol`` does not hold: a result as recorded, and the
workers the service knows."""

from __future__ import annotations

from pydantic import BaseModel, Field

from hpsearch.lifecycle import TrialStatus
from service.schemas import PageInfo, UtcTimestamp


class TellAnswer(BaseModel):
    """The trial as the service recorded its result."""

    number: int
    state: TrialStatus
    value: float | None
    reason: str | None


class HeldTrial(BaseModel):
    """The running trial a worker holds the lease of."""

    trial_id: int
    study_id: int
    study_name: str
    number: int
    attempt: int
    lease_expires_at: UtcTimestamp | None


class WorkerPublic(BaseModel):
    """One worker, as the service last saw it."""

    id: str
    hostname: str | None
    first_seen: UtcTimestamp
    last_seen: UtcTimestamp = Field(description="its last ask, heartbeat or result")
    seconds_since_seen: float
    live: bool = Field(description="seen within the lease time (HPSEARCH_LEASE_SECONDS)")
    trials_finished: int
    trial: HeldTrial | None = Field(description="the running trial it holds, if any")


class WorkersPage(PageInfo):
    """A page of workers, the most recently seen first."""

    data: list[WorkerPublic]
    live: int = Field(description="live workers, whatever the query")
