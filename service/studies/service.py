"""Study use cases that change a study: create, stop, resume, delete (what reads one is in
``reads``)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from hpsearch.lifecycle import (
    ACTIVE_STUDY_STATUSES,
    StudyStatus,
)
from service import optuna_bridge
from service.context import ServiceContext
from service.datasets import service as datasets
from service.db.models import Study, Trial, TrialEpoch
from service.db.session import unit_of_work
from service.errors import AlreadyExistsError, ConflictError
from service.lifecycle import update_study_status
from service.studies.reads import get_study, study_row
from service.studies.repository import spec_of
from service.studies.validation import parse_study_spec

log = logging.getLogger(__name__)


def create_study(ctx: ServiceContext, raw: Any) -> dict[str, Any]:
    """Validate a spec and create the study (queued until a worker asks).

    All or nothing: whatever can be refused is checked, and everything the row needs computed,
    before the Optuna study exists; any failure after it (a name taken meanwhile, a database
    error) removes it again, so that no refusal leaves an Optuna study or a row behind.
    """
    spec = parse_study_spec(
        raw,
        ctx.settings.max_trials,
        ctx.settings.max_epochs,
        ctx.settings.max_model_params,
        uploaded_shape=lambda ident: datasets.example_shape(ctx, ident),
    )
    dataset_id = spec.dataset.get("id")
    _check_active_limit(ctx)
    if _name_taken(ctx, spec.name):
        raise AlreadyExistsError("name", f"a study named {spec.name!r} already exists")
    uid, now = f"hpsearch-{uuid.uuid4().hex}", ctx.clock.now()
    stored = spec.model_dump(mode="json", exclude_none=True)
    # At most a year ahead (the spec's maximum): never past what a datetime holds.
    deadline = now + timedelta(seconds=spec.timeout_seconds) if spec.timeout_seconds else None
    optuna_study_id = optuna_bridge.create_study(ctx.url, spec, uid)
    try:
        with unit_of_work(ctx.sessions) as s:
            study = Study(
                name=spec.name,
                uid=uid,
                optuna_study_id=optuna_study_id,
                status=StudyStatus.QUEUED,
                spec=stored,
                n_trials=spec.n_trials,
                dataset_id=dataset_id,
                created_at=now,
                deadline_at=deadline,
            )
            s.add(study)
            s.flush()
            study_id = study.id
            # Named with our id, in the transaction that records the study: both or neither.
            optuna_name = optuna_bridge.optuna_study_name(spec.name, study_id)
            optuna_bridge.name_study(s, optuna_study_id, optuna_name)
    except BaseException as exc:
        _discard_optuna_study(ctx, optuna_study_id, spec.name)
        if isinstance(exc, optuna_bridge.OptunaNameTakenError):
            raise AlreadyExistsError(
                "name", f"{exc}, made outside this service: rename or delete it there"
            ) from None
        if isinstance(exc, IntegrityError) and _name_taken(ctx, spec.name):
            raise AlreadyExistsError(
                "name", f"a study named {spec.name!r} already exists"
            ) from None
        raise
    log.info("study created", extra={"study": spec.name, "n_trials": spec.n_trials})
    return get_study(ctx, study_id)


def _name_taken(ctx: ServiceContext, name: str) -> bool:
    with ctx.sessions() as s:
        return s.scalar(select(Study.id).where(Study.name == name)) is not None


def _discard_optuna_study(ctx: ServiceContext, optuna_study_id: int, name: str) -> None:
    """Remove the Optuna study of a study that was not created. Should the database refuse
    that too, it is left under its uid (``hpsearch-<hex>``), which no study of ours names."""
    try:
        optuna_bridge.delete_study(ctx.url, optuna_study_id)
    except Exception:
        log.exception(
            "the Optuna study of a study not created could not be removed",
            extra={"study": name, "optuna_study_id": optuna_study_id},
        )


def _check_active_limit(ctx: ServiceContext) -> None:
    """At most ``HPSEARCH_MAX_ACTIVE_STUDIES`` studies queued or running at once."""
    limit = ctx.settings.max_active_studies
    with ctx.sessions() as s:
        active = s.scalar(
            select(func.count()).select_from(Study).where(Study.status.in_(ACTIVE_STUDY_STATUSES))
        )
    if (active or 0) >= limit:
        raise ConflictError(
            f"{active} studies are queued or running, the most this service runs at once "
            f"(HPSEARCH_MAX_ACTIVE_STUDIES={limit}): stop one or wait for one to finish"
        )


def stop_study(ctx: ServiceContext, study_id: int) -> dict[str, Any]:
    """No new trials start; running ones are told to stop at their next epoch."""
    with unit_of_work(ctx.sessions) as s:
        study = study_row(s, study_id)
        if study.status not in ACTIVE_STUDY_STATUSES:
            raise ConflictError(
                f"study {study.name!r} is {study.status}; only a queued or "
                "running study can be stopped"
            )
        study.status, study.status_reason, study.finished_at = (
            "stopped",
            "stopped by a user",
            ctx.clock.now(),
        )
    log.info("study stopped", extra={"study": study.name})
    return get_study(ctx, study_id)


def resume_study(ctx: ServiceContext, study_id: int) -> dict[str, Any]:
    """A stopped (or failed) study runs again, toward the rest of its budget."""
    with unit_of_work(ctx.sessions) as s:
        study = study_row(s, study_id)
        if study.status not in ("stopped", "failed"):
            raise ConflictError(
                f"study {study.name!r} is {study.status}; only a stopped or "
                "failed study can be resumed"
            )
        if study.dataset_id is not None and not datasets.exists(ctx, study.dataset_id):
            raise ConflictError(
                f"study {study.name!r} trains on dataset {study.dataset_id}, which was deleted; "
                "upload the same file again (it gets the same id) to resume"
            )
        _check_active_limit(ctx)
        study.status = StudyStatus.RUNNING if study.started_at else "queued"
        study.status_reason, study.finished_at = None, None
        spec = spec_of(study)
        if spec.timeout_seconds:
            study.deadline_at = ctx.clock.now() + timedelta(seconds=spec.timeout_seconds)
    update_study_status(ctx, study_id)
    log.info("study resumed", extra={"study": study.name})
    return get_study(ctx, study_id)


def delete_study(ctx: ServiceContext, study_id: int) -> None:
    """Delete the study, its trials and Optuna's copy. Workers on its trials get 404."""
    with unit_of_work(ctx.sessions) as s:
        study = study_row(s, study_id)
        optuna_study_id, name = study.optuna_study_id, study.name
        # Should the Optuna study outlive our row (a crash right after this commit), it is left
        # under the uid, never under a name that a new study of the same id would want.
        optuna_bridge.name_study(s, optuna_study_id, study.uid)
        trial_ids = select(Trial.id).where(Trial.study_id == study_id)
        s.execute(delete(TrialEpoch).where(TrialEpoch.trial_id.in_(trial_ids)))
        s.execute(delete(Trial).where(Trial.study_id == study_id))
        s.execute(delete(Study).where(Study.id == study_id))
    optuna_bridge.delete_study(ctx.url, optuna_study_id)
    log.info("study deleted", extra={"study": name})
