"""``GET /api/v1/workers``: the workers the database knows, whether each is live, and the trial
it holds (for operators: a worker that died and was restarted shows as a new, live id)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.deps import ContextDep, Page, page
from service.api.routes import UtcTimestamp
from service.trials import workers

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


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


class WorkersPublic(BaseModel):
    """A page of workers, the most recently seen first."""

    data: list[WorkerPublic]
    count: int = Field(description="workers matching the query")
    live: int = Field(description="live workers, whatever the query")
    offset: int
    limit: int


@router.get("")
def list_workers(
    ctx: ContextDep,
    rows: Annotated[Page, page(100)],
    live: Annotated[bool, Query(description="only the live ones")] = False,
) -> WorkersPublic:
    """Workers with their last heartbeat, whether they are live, and the trial each holds."""
    return WorkersPublic.model_validate(
        workers.list_workers(ctx, rows.offset, rows.limit, live_only=live)
    )
