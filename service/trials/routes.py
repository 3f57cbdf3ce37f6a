"""The worker protocol's routes: ask for a trial, report each epoch, keep the lease, tell the
result, hand a trial back."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from hpsearch.lifecycle import TrialStatus
from hpsearch.protocol import (
    AskRequest,
    Assignment,
    EpochReport,
    Heartbeat,
    HeartbeatAnswer,
    ReleaseAnswer,
    ReleaseRequest,
    ReportAnswer,
    TellRequest,
)
from service.api.deps import (
    ContextDep,
    Page,
    TrialIdPath,
    page,
)
from service.trials import leases, reports, workers
from service.trials.schemas import TellAnswer, WorkersPage

log = logging.getLogger(__name__)

workers_router = APIRouter(prefix="/api/v1", tags=["worker protocol"])
# For operators: the workers the database knows, whether each is live, and the trial it holds (a
# worker that died and was restarted shows as a new, live id).
worker_list_router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@workers_router.post(
    "/workers/ask",
    response_model=Assignment,
    responses={204: {"description": "no work now; ask again after Retry-After"}},
)
def ask(ctx: ContextDep, request: AskRequest) -> Any:
    """A trial to train (the same one again for a worker that already has one)."""
    assignment = leases.assign(ctx, request.worker_id, request.hostname)
    if assignment is None:
        return Response(
            status_code=204, headers={"Retry-After": f"{ctx.settings.idle_retry_seconds:g}"}
        )
    return assignment


@workers_router.post("/trials/{trial_id}/report")
def report(ctx: ContextDep, trial_id: TrialIdPath, body: EpochReport) -> ReportAnswer:
    """One finished epoch; the answer says whether to stop (pruned)."""
    return reports.record_report(ctx, trial_id, body)


@workers_router.post("/trials/{trial_id}/heartbeat")
def heartbeat(ctx: ContextDep, trial_id: TrialIdPath, body: Heartbeat) -> HeartbeatAnswer:
    """Keep the trial's lease while it trains."""
    return reports.heartbeat(ctx, trial_id, body)


@workers_router.post("/trials/{trial_id}/tell")
def tell(ctx: ContextDep, trial_id: TrialIdPath, body: TellRequest) -> TellAnswer:
    """The trial's result; 409 once it is finished."""
    trial = reports.record_result(ctx, trial_id, body)
    return TellAnswer(
        number=trial.number, state=TrialStatus(trial.state), value=trial.value, reason=trial.reason
    )


@workers_router.post("/trials/{trial_id}/release")
def release(ctx: ContextDep, trial_id: TrialIdPath, body: ReleaseRequest) -> ReleaseAnswer:
    """Hand back a trial this worker will not finish: it is stopping (another worker re-runs the
    trial at once) or the trial's process died (re-run up to the spec's ``max_retries``, then
    failed). 409 unless the caller holds the lease; a repeat gets the same answer."""
    return reports.release_trial(ctx, trial_id, body)


@worker_list_router.get("")
def list_workers(
    ctx: ContextDep,
    rows: Annotated[Page, page(100)],
    live: Annotated[bool, Query(description="only the live ones")] = False,
) -> WorkersPage:
    """Workers with their last heartbeat, whether they are live, and the trial each holds."""
    return WorkersPage.model_validate(
        workers.list_workers(ctx, rows.offset, rows.limit, live_only=live)
    )
