"""Thin routes: parse input, call one use case, return its result."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, WithJsonSchema
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hpsearch.datasets import DATASET_ID_PATTERN
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
from hpsearch.results import ParameterCounts
from service.api.auth import UserOrWorkerDep
from service.api.deps import (
    ContextDep,
    Page,
    StudyIdPath,
    TrialIdPath,
    TrialNumberPath,
    page,
)
from service.api.errors import refusal
from service.datasets import service as datasets
from service.datasets.uploads import receive_upload
from service.db.migrate import current_revision, head_revision
from service.studies import analysis
from service.studies import service as studies
from service.studies.spec import StudySpecBody
from service.trials import leases, reports

log = logging.getLogger(__name__)

health = APIRouter(tags=["health"])
probes_router = APIRouter(tags=["health"])
studies_router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
workers_router = APIRouter(prefix="/api/v1", tags=["worker protocol"])
analysis_router = APIRouter(prefix="/api/v1/studies", tags=["analysis"])
datasets_router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
# Users read their datasets back; workers fetch the ones their trials name.
dataset_content_router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])

TrialStateFilter = Literal["running", "complete", "pruned", "diverged", "timed_out", "failed"]
TrialSort = Literal["number", "value", "epochs_run", "duration", "state"]


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@probes_router.get("/readyz")
def readyz(ctx: ContextDep) -> JSONResponse:
    """The database answers and its schema is current."""
    try:
        with ctx.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current, head = current_revision(ctx.engine), head_revision()
    except Exception as exc:  # any database failure means not ready
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "detail": f"database: {exc}", "errors": []},
        )
    if current != head:
        return JSONResponse(
            status_code=503,
            content={
                "status": "unavailable",
                "detail": f"schema at {current}, expected {head}: run `hpsearch migrate`",
                "errors": [],
            },
        )
    return JSONResponse({"status": "ready"})


# -- studies -------------------------------------------------------------------------------------


@studies_router.post("", status_code=201)
def create_study(ctx: ContextDep, spec: Annotated[StudySpecBody, Body()]) -> dict[str, Any]:
    """Launch a study. 422 names each bad field; 409 when the name is taken."""
    return studies.create_study(ctx, spec)


@studies_router.get("")
def list_studies(ctx: ContextDep, rows: Annotated[Page, page(50)]) -> dict[str, Any]:
    """Studies, newest first: ``{data, count, offset, limit}``."""
    return studies.list_studies(ctx, rows.offset, rows.limit)


@studies_router.get("/{study_id}")
def get_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Status, spec, trial counts by state, progress, best trial, timestamps."""
    return studies.get_study(ctx, study_id)


@studies_router.post("/{study_id}/stop")
def stop_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """No new trials; running ones stop at their next epoch."""
    return studies.stop_study(ctx, study_id)


@studies_router.post("/{study_id}/resume")
def resume_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Run a stopped study toward the rest of its budget."""
    return studies.resume_study(ctx, study_id)


@studies_router.delete("/{study_id}", status_code=204)
def delete_study(ctx: ContextDep, study_id: StudyIdPath) -> Response:
    """Delete the study and all its trials."""
    studies.delete_study(ctx, study_id)
    return Response(status_code=204)


@studies_router.get("/{study_id}/trials")
def list_trials(
    ctx: ContextDep,
    study_id: StudyIdPath,
    rows: Annotated[Page, page(100)],
    state: TrialStateFilter | None = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**62,
            description="only trials changed since this cursor (the previous answer's `cursor`)",
        ),
    ] = None,
    sort: TrialSort = "number",
    descending: bool = False,
) -> dict[str, Any]:
    """A page of trials, sorted (by number unless told): ``{data, count, offset, limit,
    cursor}``."""
    return studies.list_trials(
        ctx, study_id, state, after, rows.offset, rows.limit, sort, descending
    )


@studies_router.get("/{study_id}/trials.csv")
def trials_csv(ctx: ContextDep, study_id: StudyIdPath) -> StreamingResponse:
    """Every trial as CSV."""
    rows = studies.trials_csv(ctx, study_id)
    return StreamingResponse(
        rows,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.csv"'},
    )


# Timestamps are stored and answered as naive UTC (no offset), which JSON Schema's date-time
# format would reject: the schema says so in words.
UtcTimestamp = Annotated[
    datetime,
    WithJsonSchema(
        {"type": "string", "description": "UTC, ISO 8601 without an offset: 2025-01-31T12:00:00"}
    ),
]


class TrialEpochPublic(BaseModel):
    """One epoch the trial reported, and the answer it got."""

    epoch: int = Field(description="1-based")
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    should_stop: bool = Field(description="the answer to this report told the trial to stop")
    stop_reason: str | None = Field(description="why it was told to stop (pruned, study stopped)")


class TrialDetail(BaseModel):
    """One trial of a study, with the per-epoch metrics of its latest attempt."""

    number: int
    state: TrialStateFilter
    params: dict[str, Any] = Field(
        description="the sampled and the fixed values the trainer got (its defaults for the rest)"
    )
    searched: list[str] = Field(description="the names in `params` the search space sampled")
    fixed: list[str] = Field(description="the names in `params` fixed by the spec's model/training")
    value: float | None = Field(description="the objective metric, once finished")
    reason: str | None = Field(description="why it was pruned, failed or re-run")
    worker_id: str | None
    attempt: int = Field(description="1 unless a lost worker's trial was re-run")
    epochs_run: int
    epochs_planned: int = Field(description="the spec's epochs per trial")
    duration_seconds: float | None = Field(description="wall time, started to finished")
    train_seconds: float | None = Field(description="training time, as the worker measured it")
    started_at: UtcTimestamp
    finished_at: UtcTimestamp | None
    parameters: ParameterCounts | None = Field(description="the model's weights, once finished")
    change_seq: int
    epochs: list[TrialEpochPublic]


@studies_router.get("/{study_id}/trials/{number}")
def get_trial(ctx: ContextDep, study_id: StudyIdPath, number: TrialNumberPath) -> TrialDetail:
    """One trial: params (which were searched, which fixed), state, reason, per-epoch metrics,
    worker, timings."""
    return TrialDetail.model_validate(studies.get_trial(ctx, study_id, number))


# -- datasets ------------------------------------------------------------------------------------

DatasetIdPath = Annotated[
    str, Path(pattern=DATASET_ID_PATTERN, description="e.g. ds_0123456789abcdef")
]
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": ".npz (x_train, y_train, optional x_val, y_val, x_test, "
                        "y_test) or .csv (numeric or text features and a label column)",
                    },
                    "name": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "at most 200 bytes (UTF-8); default: the file's name",
                    },
                    "label_column": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "csv: default 'label'; at most 200 bytes (UTF-8)",
                    },
                    "format": {"type": "string", "enum": ["npz", "csv"]},
                },
            }
        }
    },
}


@datasets_router.post(
    "",
    status_code=201,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        200: {"description": "the same file was uploaded before: that dataset"},
        413: {"description": "the file passes the configured size limit"},
        422: {"description": "the file fails a check; nothing is stored"},
    },
)
async def upload_dataset(request: Request, ctx: ContextDep) -> JSONResponse:
    """Upload a dataset (multipart field ``file``). Checked before it is stored: numeric arrays
    only (no pickle), shapes that agree, integer labels in range, no NaN or inf. Answers its id,
    name, SHA-256, shapes, classes and size."""
    try:
        upload = await receive_upload(
            request, datasets.incoming_dir(ctx), ctx.settings.max_upload_bytes
        )
    except ClientDisconnect:  # the partial file is gone already
        stalled = request.scope.get("state", {}).get("body_stalled")
        if stalled is not None:
            log.warning("upload stalled: dropped", extra={"seconds": stalled})
            reason = (
                f"no data for {stalled:g} s (HPSEARCH_REQUEST_BODY_SECONDS); nothing was stored"
            )
            return refusal(408, reason, field="file", headers={"Connection": "close"})
        log.info("upload abandoned by the client")  # nobody is left to answer
        return refusal(400, "upload abandoned")
    dataset, created = await run_in_threadpool(datasets.store_upload, ctx, upload)
    return JSONResponse(dataset, status_code=201 if created else 200)


@datasets_router.get("")
def list_datasets(ctx: ContextDep, rows: Annotated[Page, page(50)]) -> dict[str, Any]:
    """Uploaded datasets, newest first: ``{data, count, offset, limit, max_upload_bytes}``."""
    return {
        **datasets.list_datasets(ctx, rows.offset, rows.limit),
        "max_upload_bytes": ctx.settings.max_upload_bytes,
    }


@datasets_router.get("/{dataset_id}")
def get_dataset(ctx: ContextDep, dataset_id: DatasetIdPath) -> dict[str, Any]:
    """One dataset, with the studies that train on it."""
    return datasets.get_dataset(ctx, dataset_id)


@datasets_router.delete("/{dataset_id}", status_code=204)
def delete_dataset(ctx: ContextDep, dataset_id: DatasetIdPath) -> Response:
    """Delete a dataset; 409 while a queued or running study uses it."""
    datasets.delete_dataset(ctx, dataset_id)
    return Response(status_code=204)


@dataset_content_router.get(
    "/{dataset_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}, "text/csv": {}}}},
)
def dataset_content(
    ctx: ContextDep, dataset_id: DatasetIdPath, caller: UserOrWorkerDep
) -> FileResponse:
    """The dataset's file, as uploaded (for workers); ``X-Content-SHA256`` is its hash. A worker
    token reaches it only while a trial that trains on it is leased (404 otherwise)."""
    worker = caller.name if caller is not None and caller.kind == "worker" else None
    path, d = datasets.content(ctx, dataset_id, worker)
    return FileResponse(
        path,
        media_type="text/csv" if d["format"] == "csv" else "application/octet-stream",
        filename=f"{d['id']}.{d['format']}",
        headers={
            "X-Content-SHA256": d["sha256"],
            "ETag": f'"{d["sha256"]}"',
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


# -- worker protocol -----------------------------------------------------------------------------


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
def tell(ctx: ContextDep, trial_id: TrialIdPath, body: TellRequest) -> dict[str, Any]:
    """The trial's result; 409 once it is finished."""
    trial = reports.record_result(ctx, trial_id, body)
    return {
        "number": trial.number,
        "state": trial.state,
        "value": trial.value,
        "reason": trial.reason,
    }


@workers_router.post("/trials/{trial_id}/release")
def release(ctx: ContextDep, trial_id: TrialIdPath, body: ReleaseRequest) -> ReleaseAnswer:
    """Hand back a trial this worker will not finish: it is stopping (another worker re-runs the
    trial at once) or the trial's process died (re-run up to the spec's ``max_retries``, then
    failed). 409 unless the caller holds the lease; a repeat gets the same answer."""
    return reports.release_trial(ctx, trial_id, body)


# -- analysis (the dashboard's plots) ------------------------------------------------------------


@analysis_router.get("/{study_id}/analysis")
def study_analysis(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Every trial's number, state, value and searched params as columns, and the per-epoch
    objective of the best and newest trials (at most 300 curves)."""
    return analysis.study_analysis(ctx, study_id)


@analysis_router.get("/{study_id}/importance")
def param_importance(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Each searched parameter's importance, once 5 trials completed."""
    return analysis.param_importance(ctx, study_id)


@analysis_router.get("/-/template", tags=["studies"])
def spec_template() -> dict[str, Any]:
    """A starting spec (the mission's search space) and what each trainer parameter accepts:
    the dashboard's launch form is built from it."""
    from hpsearch.datasets import BUILTIN_DATASETS
    from hpsearch.params import PARAMETER_NAMES, parameter_domain
    from service.studies.spec import (
        DEFAULT_SEARCH_SPACE,
        MODEL_PARAMS,
        Objective,
        PrunerSpec,
        SamplerSpec,
    )

    objective, pruner = Objective(), PrunerSpec()

    return {
        "spec": {
            "name": "",
            "dataset": {"name": "digits"},
            "model": {
                "architecture": "mlp",
                "hidden_units": [300, 100],
                "activation": "elu",
                "initializer": "he_normal",
                "batch_norm": "before",
            },
            "training": {"epochs": 5, "batch_size": 50, "optimizer": "sgd"},
            # The spec's own defaults, spelled out so the form shows them.
            "objective": {"metric": objective.metric, "direction": objective.resolved_direction},
            "search_space": DEFAULT_SEARCH_SPACE,
            "sampler": {"type": SamplerSpec().type},
            "pruner": {
                "type": pruner.type,
                "n_startup_trials": pruner.n_startup_trials,
                "n_warmup_steps": pruner.n_warmup_steps,
            },
            "n_trials": 20,
        },
        "datasets": list(BUILTIN_DATASETS),  # uploaded ones: GET /api/v1/datasets
        "parameters": {
            name: {
                "section": "model" if name in MODEL_PARAMS else "training",
                "kind": (d := parameter_domain(name)).kind,
                "choices": list(d.choices),
                "allowed": d.describe(),
            }
            for name in PARAMETER_NAMES
        },
    }
