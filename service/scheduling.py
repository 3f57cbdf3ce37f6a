"""The worker protocol's use cases: hand out trials, take reports, keep leases, take results.

Every decision that several workers (or API processes) could race for is one conditional UPDATE
(``... WHERE n_allocated < n_trials``, ``... WHERE lease_expires_at < now``), which both SQLite
and PostgreSQL apply atomically. Optuna is always called outside our transactions: SQLite has
one writer, and Optuna writes through its own engine.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpsearch.params import TrainingSettings
from hpsearch.protocol import (
    MAX_REASON_CHARS,
    Assignment,
    EpochReport,
    Heartbeat,
    HeartbeatAnswer,
    ReleaseAnswer,
    ReleaseRequest,
    ReportAnswer,
    TellRequest,
)
from hpsearch.results import METRIC_NAMES
from service import datasets, optuna_bridge
from service.context import ServiceContext
from service.db.models import ACTIVE, Study, Trial, TrialEpoch, TrialRelease, Worker
from service.db.session import unit_of_work
from service.errors import ConflictError, FieldError, InvalidSpecError, NotFoundError
from service.spec import StudySpec

log = logging.getLogger(__name__)

FINISHED_TRIAL_STATES = ("complete", "pruned", "diverged", "timed_out", "failed")
# A study whose first trials all fail (for good) is failed: its spec is broken, not unlucky.
FAILED_STUDY_AFTER = 5
# How much of a re-run trial's history (its attempts and how each ended) its reason keeps: what
# one release may say.
_HISTORY_CHARS = MAX_REASON_CHARS


_SPECS: OrderedDict[str, StudySpec] = OrderedDict()
_SPECS_LOCK = threading.Lock()


def spec_of(study: Study) -> StudySpec:
    """The validated spec stored with a study."""
    return _spec(study.uid, study.spec)


def _spec(uid: str, stored: dict[str, Any]) -> StudySpec:
    """A stored spec never changes: it is validated once per process, keyed by the study's
    uid (unique, even across deleted studies)."""
    with _SPECS_LOCK:
        spec = _SPECS.get(uid)
        if spec is not None:
            _SPECS.move_to_end(uid)
            return spec
    spec = StudySpec.model_validate(stored)
    with _SPECS_LOCK:
        _SPECS[uid] = spec
        if len(_SPECS) > 256:
            _SPECS.popitem(last=False)
    return spec


def _changed(session: Session, statement: Any) -> int:
    """Execute an UPDATE and return how many rows it changed (0: someone else won the race)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def next_seq(session: Session, study_id: int) -> int:
    """Bump and return the study's change counter (for ``?after=N`` polling)."""
    seq = session.execute(
        update(Study)
        .where(Study.id == study_id)
        .values(change_seq=Study.change_seq + 1)
        .returning(Study.change_seq)
    ).scalar_one()
    return int(seq)


# -- ask -----------------------------------------------------------------------------------------


def _lease_expiry(ctx: ServiceContext, now: datetime | None = None) -> datetime:
    """When a lease taken or renewed now runs out."""
    return (now or ctx.clock.now()) + timedelta(seconds=ctx.settings.lease_seconds)


def assign(ctx: ServiceContext, worker_id: str, hostname: str | None) -> Assignment | None:
    """The trial this worker should train: its current one, else a lost one to re-run, else a
    new one from the study with the fewest running trials. ``None`` when there is no work."""
    now = ctx.clock.now()
    lease_until = _lease_expiry(ctx, now)
    with unit_of_work(ctx.sessions) as s:
        _touch_worker(s, worker_id, hostname, now)
        current = s.scalars(
            select(Trial)
            .where(Trial.worker_id == worker_id, Trial.state == "running")
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
        .where(Trial.worker_id == worker_id, Trial.state == "running")
        .order_by(Trial.id)
        .limit(1)
    ).first()


def _touch_worker(s: Session, worker_id: str, hostname: str | None, now: datetime) -> None:
    if _changed(s, update(Worker).where(Worker.id == worker_id).values(last_seen=now)):
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
        .where(Trial.state == "running", Trial.worker_id.is_not(None))
        .group_by(Trial.study_id)
        .subquery()
    )
    rows = s.execute(
        select(Study.id)
        .outerjoin(running, running.c.study_id == Study.id)
        .where(Study.status.in_(ACTIVE))
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
    expired = and_(Trial.state == "running", Trial.lease_expires_at < now)
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
                why = _history(
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
                if _changed(
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
            if _changed(
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


def _history(previous: str | None, event: str) -> str:
    """A re-run trial's reason: how each earlier attempt ended, oldest first, then ``event``;
    only the newest part when it grows long."""
    text = f"{previous}; {event}" if previous else event
    return text if len(text) <= _HISTORY_CHARS else "..." + text[-(_HISTORY_CHARS - 3) :]


def _new_trial(
    ctx: ServiceContext, study_id: int, worker_id: str, now: datetime, lease_until: datetime
) -> Assignment | None:
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None or study.status not in ACTIVE or study.n_allocated >= study.n_trials:
            return None
        if study.deadline_at is not None and study.deadline_at <= now:
            return None
        spec, optuna_study_id = spec_of(study), study.optuna_study_id
    optuna_study = optuna_bridge.load_study(ctx.url, optuna_study_id, spec)
    trial_id, sampled = optuna_bridge.ask(optuna_study, spec)
    with unit_of_work(ctx.sessions) as s:
        current = _lock_worker(s, worker_id, now)
        slot = s.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.n_allocated < Study.n_trials,
                Study.status.in_(ACTIVE),
                or_(Study.deadline_at.is_(None), Study.deadline_at > now),
            )
            .values(
                n_allocated=Study.n_allocated + 1,
                status="running",
                started_at=func.coalesce(Study.started_at, now),
                last_assigned_at=now,
            )
            .returning(Study.n_allocated)
        ).scalar()
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


# -- report, heartbeat ---------------------------------------------------------------------------


def _trial_and_study(s: Session, trial_id: int) -> tuple[Trial, Study]:
    """The trial and its study; ``NotFoundError`` when there is no such trial."""
    trial = s.get(Trial, trial_id)
    if trial is None:
        raise NotFoundError(f"no trial with id {trial_id} (its study may have been deleted)")
    return trial, s.get_one(Study, trial.study_id)


def _leased_trial(s: Session, trial_id: int, worker_id: str, attempt: int) -> tuple[Trial, Study]:
    trial, study = _trial_and_study(s, trial_id)
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
    spec = _spec(row.uid, row.spec)
    value = float(report.metrics[spec.objective.metric])
    optuna_study = optuna_bridge.load_study(ctx.url, row.optuna_study_id, spec)
    prune = optuna_bridge.report(optuna_study, trial_id, report.epoch, value)
    reason = None
    if row.status not in ACTIVE:
        prune, reason = True, f"stopped with the study at epoch {report.epoch}"
    elif prune:
        reason = f"pruned at epoch {report.epoch} by the {spec.pruner.type} pruner"
    try:
        with unit_of_work(ctx.sessions) as s:
            kept = _changed(
                s,
                update(Trial)
                .where(
                    Trial.id == trial_id,
                    Trial.state == "running",
                    Trial.worker_id == report.worker_id,
                    Trial.attempt == report.attempt,
                )
                .values(
                    epochs_run=report.epoch,
                    lease_expires_at=_lease_expiry(ctx),
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
        trial.lease_expires_at = _lease_expiry(ctx)
        s.execute(
            update(Worker).where(Worker.id == beat.worker_id).values(last_seen=ctx.clock.now())
        )
        return HeartbeatAnswer(
            lease_seconds=ctx.settings.lease_seconds, should_stop=study.status not in ACTIVE
        )


# -- tell ----------------------------------------------------------------------------------------


def record_result(ctx: ServiceContext, trial_id: int, tell: TellRequest) -> Trial:
    """Finish a trial with the worker's result; 409 (``ConflictError``) once it is finished."""
    result = tell.result
    now = ctx.clock.now()
    with unit_of_work(ctx.sessions) as s:
        trial, study = _leased_trial(s, trial_id, tell.worker_id, tell.attempt)
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
        trial.change_seq = next_seq(s, study.id)
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
            if trial is None or trial.optuna_synced or trial.state == "running":
                return
            known = (s.get_one(Study, trial.study_id).optuna_study_id, trial.state, trial.value)
    optuna_study_id, state, value = known
    optuna_bridge.tell(ctx.url, optuna_study_id, trial_id, state, value)
    with unit_of_work(ctx.sessions) as s:
        s.execute(update(Trial).where(Trial.id == trial_id).values(optuna_synced=True))


def update_study_status(ctx: ServiceContext, study_id: int) -> None:
    """Complete a study whose budget is spent or whose deadline passed; fail one whose first
    trials all failed. Runs after every result and in the reaper (idempotent)."""
    now = ctx.clock.now()
    with unit_of_work(ctx.sessions) as s:
        study = s.get(Study, study_id)
        if study is None or study.status not in ACTIVE:
            return
        counts = dict(
            s.execute(
                select(Trial.state, func.count())
                .where(Trial.study_id == study_id)
                .group_by(Trial.state)
            )
            .tuples()
            .all()
        )
        finished = sum(counts.get(k, 0) for k in FINISHED_TRIAL_STATES)
        running = counts.get("running", 0)
        status, reason = None, None
        if finished >= study.n_trials:
            status = "completed"
        elif counts.get("failed", 0) >= min(
            FAILED_STUDY_AFTER, study.n_trials
        ) and finished == counts.get("failed", 0):
            status = "failed"
            last = s.scalars(
                select(Trial.reason)
                .where(Trial.study_id == study_id, Trial.state == "failed")
                .order_by(Trial.finished_at.desc())
                .limit(1)
            ).first()
            reason = f"its first {finished} trials all failed; last: {last}"
        elif study.deadline_at is not None and study.deadline_at <= now and running == 0:
            status = "completed"
            reason = f"time limit reached after {finished} of {study.n_trials} trials"
        if status is not None:
            s.execute(
                update(Study)
                .where(Study.id == study_id, Study.status.in_(ACTIVE))
                .values(status=status, status_reason=reason, finished_at=now)
            )
            log.info("study %s", status, extra={"study": study.name, "finished": finished})


# -- release -------------------------------------------------------------------------------------


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
            trial, study, answer = _earlier_release(s, trial_id, release)
            if answer is not None:
                return answer
            limit = spec_of(study).max_retries
            crashes = trial.crashes + (release.cause == "crashed")
            retries_left = max(limit - crashes, 0)
            event = f"attempt {release.attempt}: {release.reason}"
            held = and_(
                Trial.id == trial_id,
                Trial.state == "running",
                Trial.worker_id == release.worker_id,
                Trial.attempt == release.attempt,
            )
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
                    reason=_history(trial.reason, f"{event}; re-run"),
                )
            if not _changed(s, update(Trial).where(held).values(**values)):
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
        # lease was re-let to another worker meanwhile.
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
    trial, study = _trial_and_study(s, trial_id)
    if earlier.worker_id != release.worker_id:
        raise ConflictError(
            f"trial {trial.number} of study {study.name!r} is not leased to {release.worker_id} "
            f"(attempt {release.attempt}): {earlier.worker_id} held it and released it"
        )
    answer = ReleaseAnswer.model_validate(
        {"state": earlier.outcome, "retries_left": earlier.retries_left}
    )
    return trial, study, answer


# -- reaper --------------------------------------------------------------------------------------


def reap(ctx: ServiceContext) -> None:
    """Repair what a crash between two steps can leave behind. Safe in any number of processes.

    - a final state stored by us but not yet by Optuna: tell Optuna;
    - an Optuna trial asked for but never recorded by us (a crash right after ``ask``): adopt it
      as a lost trial when the budget allows (it is re-run), else fail it in Optuna;
    - studies whose budget is spent or whose deadline passed: complete them.
    """
    with ctx.sessions() as s:
        unsynced = list(s.scalars(select(Trial.id).where(Trial.optuna_synced.is_(False))))
        active = list(
            s.execute(
                select(Study.id, Study.optuna_study_id).where(Study.status.in_(ACTIVE))
            ).tuples()
        )
    for trial_id in unsynced:
        finalize_in_optuna(ctx, trial_id)
    for study_id, optuna_study_id in active:
        _adopt_orphans(ctx, study_id, optuna_study_id)
        update_study_status(ctx, study_id)


def _adopt_orphans(ctx: ServiceContext, study_id: int, optuna_study_id: int) -> None:
    running = optuna_bridge.running_trials(ctx.url, optuna_study_id)
    if not running:
        return
    ids = [trial_id for trial_id, _, _ in running]
    with ctx.sessions() as s:
        known = set(s.scalars(select(Trial.id).where(Trial.id.in_(ids))))
    for trial_id, age, params in running:
        # A trial younger than a lease may belong to an ask still in flight: not an orphan yet.
        if trial_id in known or age < ctx.settings.lease_seconds:
            continue
        with unit_of_work(ctx.sessions) as s:
            study = s.get_one(Study, study_id)
            slot = s.execute(
                update(Study)
                .where(Study.id == study_id, Study.n_allocated < Study.n_trials)
                .values(n_allocated=Study.n_allocated + 1)
                .returning(Study.n_allocated)
            ).scalar()
            if slot is not None:
                s.add(
                    Trial(
                        id=trial_id,
                        study_id=study_id,
                        number=slot - 1,
                        params={**spec_of(study).fixed_params, **params},
                        attempt=0,
                        lease_expires_at=ctx.clock.now(),
                        reason="recovered: created just before an API crash, never handed out",
                        change_seq=next_seq(s, study_id),
                    )
                )
                continue
        optuna_bridge.tell(ctx.url, optuna_study_id, trial_id, "failed", None)
