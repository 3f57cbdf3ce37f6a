"""What a worker says about the trial it holds: each epoch's report (and whether to prune),
heartbeats that keep its lease, its result, and a trial handed back (``release``). Each is
idempotent for the same attempt, and refused (409) once the lease has passed to another."""

from __future__ import annotations

import logging
from typing import Any, Literal

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpsearch.lifecycle import ACTIVE_STUDY_STATUSES, TrialStatus
from hpsearch.protocol import (
    EpochReport,
    Heartbeat,
    HeartbeatAnswer,
    ReleaseAnswer,
    ReleaseRequest,
    ReportAnswer,
    TellRequest,
)
from hpsearch.results import METRIC_NAMES
from service import optuna_bridge
from service.context import ServiceContext
from service.db.models import Study, Trial, TrialEpoch, TrialRelease, Worker
from service.db.session import unit_of_work
from service.errors import ConflictError, FieldError, InvalidSpecError, NotFoundError
from service.lifecycle import history, update_study_status
from service.studies.repository import parsed_spec, spec_of
from service.trials.repository import (
    changed,
    lease_expiry,
    leased_to,
    next_seq,
    trial_and_study,
)

log = logging.getLogger(__name__)


def _leased_trial(s: Session, trial_id: int, worker_id: str, attempt: int) -> tuple[Trial, Study]:
    trial, study = trial_and_study(s, trial_id)
    _check_lease(
        trial.state, trial.worker_id, trial.attempt, trial.number, study.name, worker_id, attempt
    )
    return trial, study


def _check_lease(
    state: str, holder: str | None, held: int, number: int, study: str, worker_id: str, attempt: int
) -> None:
    """``ConflictError`` unless the trial (its state, the worker and attempt that hold it) is
    running and leased to the caller (``worker_id``, ``attempt``)."""
    if state != "running":
        raise ConflictError(f"trial {number} of study {study!r} is already {state}")
    if holder != worker_id or held != attempt:
        raise ConflictError(
            f"trial {number} of study {study!r} is no longer leased to {worker_id} "
            f"(attempt {attempt}): its lease expired and it was handed to another worker"
        )


def record_report(ctx: ServiceContext, trial_id: int, report: EpochReport) -> ReportAnswer:
    """Store one epoch, ask the pruner, answer whether to stop. Repeats get the same answer.

    The hot path of the protocol (every epoch of every trial): one read (the lease, the study
    and a repeat of this epoch, in one query), Optuna's write and pruning decision, then one
    transaction that stores the epoch only while the lease is still the caller's.
    """
    missing = [m for m in METRIC_NAMES if m not in report.metrics]
    if missing:
        raise InvalidSpecError([FieldError("metrics", f"missing {', '.join(missing)}")])
    seen = TrialEpoch.__table__.alias("seen")
    with ctx.sessions() as s:
        row = s.execute(
            select(
                Trial.state,
                Trial.number,
                Trial.worker_id,
                Trial.attempt,
                Trial.study_id,
                Study.name.label("study_name"),
                Study.status,
                Study.uid,
                Study.optuna_study_id,
                Study.spec,
                seen.c.should_stop,
                seen.c.stop_reason,
                seen.c.epoch.label("seen_epoch"),
            )
            .join(Study, Study.id == Trial.study_id)
            .outerjoin(
                seen,
                and_(
                    seen.c.trial_id == Trial.id,
                    seen.c.attempt == report.attempt,
                    seen.c.epoch == report.epoch,
                ),
            )
            .where(Trial.id == trial_id)
        ).first()
    if row is None:
        raise NotFoundError(f"no trial with id {trial_id} (its study may have been deleted)")
    _check_lease(
        row.state,
        row.worker_id,
        row.attempt,
        row.number,
        row.study_name,
        report.worker_id,
        report.attempt,
    )
    if row.seen_epoch is not None:
        return ReportAnswer(should_stop=row.should_stop, reason=row.stop_reason)
    spec = parsed_spec(row.uid, row.spec)
    value = float(report.metrics[spec.objective.metric])
    prune = optuna_bridge.report(ctx.url, row.optuna_study_id, spec, trial_id, report.epoch, value)
    reason = None
    if row.status not in ACTIVE_STUDY_STATUSES:
        prune, reason = True, f"stopped with the study at epoch {report.epoch}"
    elif prune:
        reason = f"pruned at epoch {report.epoch} by the {spec.pruner.type} pruner"
    try:
        with unit_of_work(ctx.sessions) as s:
            kept = changed(
                s,
                update(Trial)
                .where(
                    Trial.id == trial_id,
                    Trial.state == TrialStatus.RUNNING,
                    Trial.worker_id == report.worker_id,
                    Trial.attempt == report.attempt,
                )
                .values(
                    epochs_run=report.epoch,
                    lease_expires_at=lease_expiry(ctx),
                    change_seq=next_seq(s, row.study_id),
                ),
            )
            if not kept:  # lost meanwhile (expired and re-let, or the study deleted)
                raise ConflictError(
                    f"trial {row.number} of study {row.study_name!r} is no longer leased "
                    f"to {report.worker_id} (attempt {report.attempt})"
                )
            s.add(
                TrialEpoch(
                    trial_id=trial_id,
                    attempt=report.attempt,
                    epoch=report.epoch,
                    should_stop=prune,
                    stop_reason=reason,
                    **{m: float(report.metrics[m]) for m in METRIC_NAMES},
                )
            )
    except IntegrityError:
        # The same report, retried while the first was in flight, stored it first.
        with ctx.sessions() as s:
            first = s.get_one(TrialEpoch, (trial_id, report.attempt, report.epoch))
            return ReportAnswer(should_stop=first.should_stop, reason=first.stop_reason)
    return ReportAnswer(should_stop=prune, reason=reason)


def heartbeat(ctx: ServiceContext, trial_id: int, beat: Heartbeat) -> HeartbeatAnswer:
    """Extend the trial's lease; tell the worker to stop when its study no longer runs."""
    with unit_of_work(ctx.sessions) as s:
        trial, study = _leased_trial(s, trial_id, beat.worker_id, beat.attempt)
        # Renewed only while still the caller's (the row may have changed since the read), and
        # the trial's row before the worker's: the order a result takes them in.
        held = leased_to(trial_id, beat.worker_id, beat.attempt)
        if not changed(s, update(Trial).where(held).values(lease_expires_at=lease_expiry(ctx))):
            raise ConflictError(f"trial {trial.number} of study {study.name!r} changed meanwhile")
        s.execute(
            update(Worker).where(Worker.id == beat.worker_id).values(last_seen=ctx.clock.now())
        )
        return HeartbeatAnswer(
            lease_seconds=ctx.settings.lease_seconds,
            should_stop=study.status not in ACTIVE_STUDY_STATUSES,
        )


def record_result(ctx: ServiceContext, trial_id: int, tell: TellRequest) -> Trial:
    """Finish a trial with the worker's result; 409 (``ConflictError``) once it is finished."""
    result = tell.result
    now = ctx.clock.now()
    with unit_of_work(ctx.sessions) as s:
        # Lock order, as in every use case: the study's row (its change counter), then the
        # trial's. Then take the trial in one conditional UPDATE: a lease re-let, or the same
        # result told at once on another connection, between a read and a write would otherwise
        # both finish it (a read outside the write lock on SQLite, a stale row on PostgreSQL).
        study_id = s.scalar(select(Trial.study_id).where(Trial.id == trial_id))
        seq = None if study_id is None else next_seq(s, study_id)
        held = leased_to(trial_id, tell.worker_id, tell.attempt)
        taken = changed(s, update(Trial).where(held).values(lease_expires_at=None))
        trial, study = _leased_trial(s, trial_id, tell.worker_id, tell.attempt)
        if not taken or seq is None:  # _leased_trial names the conflict; this is its last word
            raise ConflictError(f"trial {trial.number} of study {study.name!r} changed meanwhile")
        state, value, reason = result.state.value, None, result.reason
        if state == "complete":
            value = result.best_value
            if value is None:
                state, reason = "failed", "failed: the trial finished without a finite objective"
        elif state == "pruned":
            value = result.final_value
            last = s.get(TrialEpoch, (trial_id, tell.attempt, result.epochs_run))
            if last is not None and last.stop_reason:
                reason = last.stop_reason
        if trial.reason and trial.reason.startswith(("re-run", "recovered", "attempt ")):
            # Keep how this run came about beside how it ended.
            reason = f"{reason} ({trial.reason})" if reason else trial.reason
        trial.state, trial.value, trial.reason = state, value, reason
        trial.epochs_run = result.epochs_run
        trial.seconds = result.seconds
        trial.finished_at, trial.lease_expires_at = now, None
        trial.optuna_synced = False
        trial.result = {
            "best_value": result.best_value,
            "final_value": result.final_value,
            "parameters": result.parameters.model_dump() if result.parameters else None,
        }
        trial.change_seq = seq
        s.execute(
            update(Worker)
            .where(Worker.id == tell.worker_id)
            .values(trials_finished=Worker.trials_finished + 1, last_seen=now)
        )
        study_id, name, optuna_study_id = study.id, study.name, study.optuna_study_id
    log.info(
        "trial finished",
        extra={
            "study": name,
            "trial": trial.number,
            "state": state,
            "value": value,
            "worker": tell.worker_id,
        },
    )
    finalize_in_optuna(ctx, trial_id, (optuna_study_id, state, value))
    update_study_status(ctx, study_id)
    return trial


def finalize_in_optuna(
    ctx: ServiceContext, trial_id: int, known: tuple[int, str, float | None] | None = None
) -> None:
    """Write a finished trial's state into Optuna, then mark it synced (idempotent).
    ``known``: (Optuna study id, state, value) when the caller has just stored them."""
    if known is None:
        with ctx.sessions() as s:
            trial = s.get(Trial, trial_id)
            if trial is None or trial.optuna_synced or trial.state == TrialStatus.RUNNING:
                return
            known = (s.get_one(Study, trial.study_id).optuna_study_id, trial.state, trial.value)
    optuna_study_id, state, value = known
    optuna_bridge.tell(ctx.url, optuna_study_id, trial_id, state, value)
    with unit_of_work(ctx.sessions) as s:
        s.execute(update(Trial).where(Trial.id == trial_id).values(optuna_synced=True))


class _ReleaseRaced(Exception):
    """The trial changed between our read and our update (a simultaneous release or re-let)."""


def release_trial(ctx: ServiceContext, trial_id: int, release: ReleaseRequest) -> ReleaseAnswer:
    """A worker hands back a trial it will not finish.

    ``stopping``: the worker is shutting down; the trial waits, unleased, for the next worker that
    asks (as the next attempt, with the same parameters, no retry used). ``crashed``: its process
    died; the same while the spec's ``max_retries`` allows another re-run, else the trial ends
    ``failed`` with the reason. ``ConflictError`` unless the caller holds the lease; a repeated
    release changes nothing and gets the first one's answer.
    """
    now = ctx.clock.now()
    try:
        with unit_of_work(ctx.sessions) as s:
            try:
                trial, study, answer = _earlier_release(s, trial_id, release)
            except ConflictError:
                # Not (or no longer) the caller's lease: the same release, made at once on
                # another connection, may have committed between our two reads. Look again.
                raise _ReleaseRaced from None
            if answer is not None:
                return answer
            limit = spec_of(study).max_retries
            crashes = trial.crashes + (release.cause == "crashed")
            retries_left = max(limit - crashes, 0)
            event = f"attempt {release.attempt}: {release.reason}"
            held = leased_to(trial_id, release.worker_id, release.attempt)
            outcome: Literal["queued", "failed"]
            values: dict[str, Any] = {"crashes": crashes, "change_seq": next_seq(s, study.id)}
            if crashes > limit:
                outcome = "failed"
                reason = f"failed: {event}; no retries left (max_retries {limit})"
                values.update(
                    state="failed",
                    finished_at=now,
                    lease_expires_at=None,
                    optuna_synced=False,
                    reason=f"{reason} ({trial.reason})" if trial.reason else reason,
                )
            else:
                # Held by no one, its lease expired: the next ask re-lets it as the next attempt
                # (``_relet_lost_trial``), without waiting for a lease to run out.
                outcome = "queued"
                values.update(
                    worker_id=None,
                    lease_expires_at=now,
                    reason=history(trial.reason, f"{event}; re-run"),
                )
            if not changed(s, update(Trial).where(held).values(**values)):
                raise _ReleaseRaced
            s.add(
                TrialRelease(
                    trial_id=trial_id,
                    attempt=release.attempt,
                    worker_id=release.worker_id,
                    cause=release.cause,
                    reason=release.reason,
                    outcome=outcome,
                    retries_left=retries_left,
                    released_at=now,
                )
            )
            s.flush()
            study_id, name, number, optuna_study_id = (
                study.id,
                study.name,
                trial.number,
                study.optuna_study_id,
            )
    except (_ReleaseRaced, IntegrityError):
        # The same release, retried while the first was in flight, got there first; or the
        # lease was re-let to another worker meanwhile (then ``_earlier_release`` says so).
        with ctx.sessions() as s:
            trial, study, answer = _earlier_release(s, trial_id, release)
            if answer is not None:
                return answer
            raise ConflictError(
                f"trial {trial.number} of study {study.name!r} changed while it was released"
            ) from None
    log.info(
        "trial released",
        extra={
            "study": name,
            "trial": number,
            "attempt": release.attempt,
            "worker": release.worker_id,
            "cause": release.cause,
            "outcome": outcome,
            "retries_left": retries_left,
            "reason": release.reason,
        },
    )
    if outcome == "failed":
        finalize_in_optuna(ctx, trial_id, (optuna_study_id, "failed", None))
        update_study_status(ctx, study_id)
    return ReleaseAnswer(state=outcome, retries_left=retries_left)


def _earlier_release(
    s: Session, trial_id: int, release: ReleaseRequest
) -> tuple[Trial, Study, ReleaseAnswer | None]:
    """The trial and its study, and the answer to this same release if it was made before;
    ``NotFoundError``, or ``ConflictError`` when the lease is not the caller's."""
    earlier = s.get(TrialRelease, (trial_id, release.attempt))
    if earlier is None:
        return (*_leased_trial(s, trial_id, release.worker_id, release.attempt), None)
    trial, study = trial_and_study(s, trial_id)
    if earlier.worker_id != release.worker_id:
        raise ConflictError(
            f"trial {trial.number} of study {study.name!r} is not leased to {release.worker_id} "
            f"(attempt {release.attempt}): {earlier.worker_id} held it and released it"
        )
    answer = ReleaseAnswer.model_validate(
        {"state": earlier.outcome, "retries_left": earlier.retries_left}
    )
    return trial, study, answer
