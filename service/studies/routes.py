"""The studies' routes: launch, read, stop, resume and delete studies; their trials, as pages,
CSV and one by one; the analysis the dashboard plots; the spec template. Thin: parse input, call
one use case, answer with its schema."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import StreamingResponse

from hpsearch.lifecycle import StudyStatus, TrialStatus
from service.api.deps import (
    ContextDep,
    Page,
    StudyIdPath,
    TrialNumberPath,
    page,
)
from service.studies import analysis, reads
from service.studies import service as studies
from service.studies.schemas import (
    Importance,
    SpecTemplate,
    StudiesPage,
    StudyAnalysis,
    StudyPublic,
    TrialDetail,
    TrialsPage,
)
from service.studies.spec import StudySpecBody

log = logging.getLogger(__name__)

studies_router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
analysis_router = APIRouter(prefix="/api/v1/studies", tags=["analysis"])

TrialSort = Literal["number", "value", "epochs_run", "duration", "state"]


@studies_router.post("", status_code=201, response_model=StudyPublic)
def create_study(ctx: ContextDep, spec: Annotated[StudySpecBody, Body()]) -> dict[str, Any]:
    """Launch a study. 422 names each bad field; 409 when the name is taken."""
    return studies.create_study(ctx, spec)


@studies_router.get("", response_model=StudiesPage)
def list_studies(ctx: ContextDep, rows: Annotated[Page, page(50)]) -> dict[str, Any]:
    """Studies, newest first: ``{data, count, offset, limit}``."""
    return reads.list_studies(ctx, rows.offset, rows.limit)


@studies_router.get("/{study_id}", response_model=StudyPublic)
def get_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Status, spec, trial counts by state, progress, best trial, timestamps."""
    return reads.get_study(ctx, study_id)


@studies_router.post("/{study_id}/stop", response_model=StudyPublic)
def stop_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """No new trials; running ones stop at their next epoch."""
    return studies.stop_study(ctx, study_id)


@studies_router.post("/{study_id}/resume", response_model=StudyPublic)
def resume_study(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Run a stopped study toward the rest of its budget."""
    return studies.resume_study(ctx, study_id)


@studies_router.delete("/{study_id}", status_code=204)
def delete_study(ctx: ContextDep, study_id: StudyIdPath) -> Response:
    """Delete the study and all its trials."""
    studies.delete_study(ctx, study_id)
    return Response(status_code=204)


@studies_router.get("/{study_id}/trials", response_model=TrialsPage)
def list_trials(
    ctx: ContextDep,
    study_id: StudyIdPath,
    rows: Annotated[Page, page(100)],
    state: TrialStatus | None = None,
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
    return reads.list_trials(ctx, study_id, state, after, rows.offset, rows.limit, sort, descending)


@studies_router.get(
    "/{study_id}/trials.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "one row per trial",
        }
    },
)
def trials_csv(ctx: ContextDep, study_id: StudyIdPath) -> StreamingResponse:
    """Every trial as CSV."""
    rows = reads.trials_csv(ctx, study_id)
    return StreamingResponse(
        rows,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.csv"'},
    )


@studies_router.get("/{study_id}/trials/{number}")
def get_trial(ctx: ContextDep, study_id: StudyIdPath, number: TrialNumberPath) -> TrialDetail:
    """One trial: params (which were searched, which fixed), state, reason, per-epoch metrics,
    worker, timings."""
    return TrialDetail.model_validate(reads.get_trial(ctx, study_id, number))


@analysis_router.get("/{study_id}/analysis", response_model=StudyAnalysis)
def study_analysis(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Every trial's number, state, value and searched params as columns, and the per-epoch
    objective of the best and newest trials (at most 300 curves)."""
    return analysis.study_analysis(ctx, study_id)


@analysis_router.get("/{study_id}/importance", response_model=Importance)
def param_importance(ctx: ContextDep, study_id: StudyIdPath) -> dict[str, Any]:
    """Each searched parameter's importance, once 5 trials completed."""
    return analysis.param_importance(ctx, study_id)


@analysis_router.get("/-/template", tags=["studies"])
def spec_template() -> SpecTemplate:
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

    return SpecTemplate.model_validate(
        {
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
                "objective": {
                    "metric": objective.metric,
                    "direction": objective.resolved_direction,
                },
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
            "trial_states": list(TrialStatus),
            "study_statuses": list(StudyStatus),
        }
    )
