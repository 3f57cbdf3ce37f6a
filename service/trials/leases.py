"""Handing trials out: ``assign`` gives a worker its trial (one it already holds, a lost one
to re-run, or a new one from Optuna), fairly between studies.

Every decision that several workers (or API processes) could race for is one conditional UPDATE
(``... WHERE n_allocated < n_trials``, ``... WHERE lease_expires_at <= now``), which both SQLite
and PostgreSQL apply atomically. Optuna is always called outside our transactions: SQLite has
one writer, and Optuna writes through its own engine."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpsearch.lifecycle import ACTIVE_STUDY_STATUSES, TrialStatus
from hpsearch.params import TrainingSettings
from hpsearch.protocol import Assignment
from service import optuna_bridge
from service.context import ServiceContext
from service.datasets import service as datasets
from service.db.models import Study, Trial, Worker
from service.db.session import unit_of_work
from service.lifecycle import history, update_study_status
from service.studies.repository import spec_of
from service.trials.reports import finalize_in_optuna
from service.trials.repository import changed, claim_slot, lease_expiry, next_seq

log = logging.getLogger(__name__)


def assign(ctx: ServiceContext, worker_id: str, hostname: str | None) -> Assignment | None:
    """The trial this worker should train: its current one, else a lost one to re-run, else a
    new one from the study with the fewest running trials. ``None`` when there is no work."""
    now = ctx.clock.now()
    lease_until = lease_expiry(ctx, now)
    with unit_of_work(ctx.sessions) as s:
        _touch_worker(s, worker_id, hostname, now)
        current = s.scalars(
            select(Trial)
            .where(Trial.worker_id == worker_id, Trial.state == TrialStatus.RUNNING)
            .order_by(Trial.id)
            .limit(1)
        ).first()
        if current is not None:
            current.lease_expires_at = lease_until
            return _assignment(ctx, current, s.get_one(Study, current.study_id))
        studies = _studies_by_fair_share(s)
    for study_id in studies:
        assignment = _relet_lost_trial(ctx, study_id, worker_id, now, lease_until)
        if assignment is None:
            assignment = _new_trial(ctx, study_id, worker_id, now, lease_until)
        if assignment is not None:
            log.info(
                "trial assigned",
                extra={
                    "study": assignment.study_name,
                    "trial": assignment.number,
                    "worker": worker_id,
                    "attempt": assignment.attempt,
                },
            )
            return assignment
    return None


def _lock_worker(s: Session, worker_id: str, now: datetime) -> Trial | None:
    """Take this worker's lock and return its running trial, if any.

    The UPDATE of the worker's row is a row lock on PostgreSQL and the database's write lock on
    SQLite, held to the end of the transaction: every transaction that hands a trial to a worker
    starts here, so two simultaneous asks of one worker (a retried request) never get two trials.
    """
    s.execute(update(Worker).where(Worker.id == worker_id).values(last_seen=now))
    return s.scalars(
        select(Trial)
        .where(Trial.worker_id == worker_id, Trial.state == TrialStatus.RUNNING)
        .order_by(Trial.id)
        .limit(1)
    ).first()


def _touch_worker(s: Session, worker_id: str, hostname: str | None, now: datetime) -> None:
    if changed(s, update(Worker).where(Worker.id == worker_id).values(last_seen=now)):
        return
    try:
        with s.begin_nested():
            s.add(Worker(id=worker_id, hostname=hostname, first_seen=now, last_seen=now))
    except IntegrityError:
        pass  # the same new worker's other request (a retry) registered it first


def _studies_by_fair_share(s: Session) -> list[int]:
    """Active studies, those with the fewest running trials first, then the longest unserved."""
    running = (  # trials in training: one waiting for its next attempt is not
        select(Trial.study_id, func.count().label("n"))
        .where(Trial.state == TrialStatus.RUNNING, Trial.worker_id.is_not(None))
        .group_by(Trial.study_id)
        .subquery()
    )
    rows = s.execute(
        select(Study.id)
        .outerjoin(running, running.c.study_id == Study.id)
        .where(Study.status.in_(ACTIVE_STUDY_STATUSES))
        .order_by(
            func.coalesce(running.c.n, 0),
            Study.last_assigned_at.is_not(None),
            Study.last_assigned_at,
            Study.id,
        )
    ).scalars()
    return list(rows)


def _relet_lost_trial(
    ctx: ServiceContext, study_id: int, worker_id: str, now: datetime, lease_until: datetime
) -> Assignment | None:
    """Re-run, with the same parameters, a trial whose lease expired: its worker stopped
    heartbeating (a loss: failed for good once it has been lost ``max_retries + 1`` times), or no
    worker holds it (released by one, adopted as an orphan, or a spare: no loss)."""
    given_up: list[int] = []
    result = None
    expired = and_(Trial.state == TrialStatus.RUNNING, Trial.lease_expires_at <= now)
    with ctx.sessions() as s:  # the usual case, no lost trial, takes no lock
        if s.scalar(select(Trial.id).where(Trial.study_id == study_id, expired).limit(1)) is None:
            return None
    with unit_of_work(ctx.sessions) as s:
        current = _lock_worker(s, worker_id, now)
        if current is not None:  # a simultaneous ask of this worker got one meanwhile
            return _assignment(ctx, current, s.get_one(Study, current.study_id))
        while result is None:
            lost = s.scalars(
                select(Trial)
                .where(Trial.study_id == study_id, expired)
                .order_by(Trial.number)
                .limit(1)
            ).first()
            if lost is None:
                break
            losses = lost.losses
            if lost.worker_id is None:  # never handed out, or handed back: its reason says how
                why = lost.reason
            else:
                losses += 1
                why = history(
                    lost.reason,
                    f"re-run: worker {lost.worker_id} stopped heartbeating "
                    f"(attempt {lost.attempt + 1})",
                )
            if lost.worker_id is not None and losses > ctx.settings.max_retries:
                failed = (
                    f"failed: its worker was lost {losses} time(s) (last: {lost.worker_id}); "
                    "no retries left"
                )
                if lost.reason:
                    failed += f" ({lost.reason})"
                if changed(
                    s,
                    update(Trial)
                    .where(Trial.id == lost.id, expired)
                    .values(
                        state="failed",
                        finished_at=now,
                        lease_expires_at=None,
                        losses=losses,
                        optuna_synced=False,
                        change_seq=next_seq(s, study_id),
                        reason=failed,
                    ),
                ):
                    given_up.append(lost.id)
                continue
            if changed(
                s,
                update(Trial)
                .where(Trial.id == lost.id, expired)
                .values(
                    worker_id=worker_id,
                    attempt=Trial.attempt + 1,
                    losses=losses,
                    lease_expires_at=lease_until,
                    started_at=now,
                    change_seq=next_seq(s, study_id),
                    reason=why,
                ),
            ):
                s.refresh(lost)
                study = s.get_one(Study, study_id)
                study.last_assigned_at = now
                result = _assignment(ctx, lost, study)
    for trial_id in given_up:
        finalize_in_optuna(ctx, trial_id)
    if given_up:
        update_study_status(ctx, study_id)
    return result


def _new_trial(
    ctx: ServiceContext, study_id: int, worker_id: str, now: datetime, lease_until: datetime
) -> Assignment | None:
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if (
            study is None
            or study.status not in ACTIVE_STUDY_STATUSES
            or study.n_allocated >= study.n_trials
        ):
            return None
        if study.deadline_at is not None and study.deadline_at <= now:
            return None
        spec, optuna_study_id = spec_of(study), study.optuna_study_id
    optuna_study = optuna_bridge.load_study(ctx.url, optuna_study_id, spec)
    trial_id, sampled = optuna_bridge.ask(optuna_study, spec)
    with unit_of_work(ctx.sessions) as s:
        current = _lock_worker(s, worker_id, now)
        slot = claim_slot(s, study_id, now)
        if slot is not None:
            trial = Trial(
                id=trial_id,
                study_id=study_id,
                number=slot - 1,  # our numbers follow the budget: 0..n_trials-1, no gaps
                params={**spec.fixed_params, **sampled},
                worker_id=worker_id,
                attempt=1,
                lease_expires_at=lease_until,
                started_at=now,
                optuna_synced=True,
                change_seq=next_seq(s, study_id),
            )
            if current is not None:
                # A simultaneous ask of this worker got a trial first: this one is left, with
                # an expired lease, for the next worker that asks.
                trial.worker_id, trial.attempt, trial.lease_expires_at = None, 0, now
            s.add(trial)
            s.flush()
            mine = current or trial
            return _assignment(ctx, mine, s.get_one(Study, mine.study_id))
        if current is not None:
            surplus = _assignment(ctx, current, s.get_one(Study, current.study_id))
        else:
            surplus = None
    # Another worker took the last slot between our look and our ask: this Optuna trial is
    # surplus, and is failed so that samplers skip it.
    optuna_bridge.tell(ctx.url, optuna_study_id, trial_id, "failed", None)
    return surplus


def _assignment(ctx: ServiceContext, trial: Trial, study: Study) -> Assignment:
    spec = spec_of(study)
    settings = TrainingSettings(
        epochs=spec.n_epochs,
        seed=trial.number,
        objective=spec.objective.metric,
        direction=spec.objective.resolved_direction,
        timeout_seconds=spec.trial_timeout_seconds,
    )
    lease = ctx.settings.lease_seconds
    return Assignment(
        trial_id=trial.id,
        study_id=study.id,
        study_name=study.name,
        number=trial.number,
        attempt=trial.attempt,
        params=trial.params,
        dataset=spec.dataset,
        dataset_file=datasets.dataset_file(ctx, spec.dataset["id"])
        if "id" in spec.dataset
        else None,
        settings=settings,
        lease_seconds=lease,
        heartbeat_seconds=max(lease / 4, 0.5),
    )
