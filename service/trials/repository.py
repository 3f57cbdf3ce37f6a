"""The trial queries that several use cases share, each written once: the change counter,
the claim of a study's next trial slot, a lease's expiry, a trial with its study."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, update
from sqlalchemy.orm import Session

from hpsearch.lifecycle import ACTIVE_STUDY_STATUSES, StudyStatus, TrialStatus
from service.context import ServiceContext
from service.db.models import Study, Trial
from service.errors import NotFoundError


def changed(session: Session, statement: Any) -> int:
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


def lease_expiry(ctx: ServiceContext, now: datetime | None = None) -> datetime:
    """When a lease taken or renewed now runs out."""
    return (now or ctx.clock.now()) + timedelta(seconds=ctx.settings.lease_seconds)


# -- report, heartbeat ---------------------------------------------------------------------------


def trial_and_study(s: Session, trial_id: int) -> tuple[Trial, Study]:
    """The trial and its study; ``NotFoundError`` when there is no such trial."""
    trial = s.get(Trial, trial_id)
    if trial is None:
        raise NotFoundError(f"no trial with id {trial_id} (its study may have been deleted)")
    return trial, s.get_one(Study, trial.study_id)


def claim_slot(s: Session, study_id: int, now: datetime, handed_out: bool = True) -> int | None:
    """Take the study's next trial slot, atomically: its 1-based number, or ``None`` when the
    budget is spent (another worker took the last one). ``handed_out``: the slot goes to a
    worker now, so the study must be active and within its deadline, and becomes running; an
    adopted orphan (``handed_out=False``) only needs the budget."""
    where = [Study.id == study_id, Study.n_allocated < Study.n_trials]
    values: dict[str, Any] = {"n_allocated": Study.n_allocated + 1}
    if handed_out:
        where += [
            Study.status.in_(ACTIVE_STUDY_STATUSES),
            or_(Study.deadline_at.is_(None), Study.deadline_at > now),
        ]
        values |= {
            "status": StudyStatus.RUNNING,
            "started_at": func.coalesce(Study.started_at, now),
            "last_assigned_at": now,
        }
    slot = s.execute(
        update(Study).where(*where).values(**values).returning(Study.n_allocated)
    ).scalar()
    return None if slot is None else int(slot)


def leased_to(trial_id: int, worker_id: str, attempt: int) -> ColumnElement[bool]:
    """The condition that the trial still runs under this worker's lease (this attempt): what
    every write of a worker's report, beat, result or release is conditional on."""
    return and_(
        Trial.id == trial_id,
        Trial.state == TrialStatus.RUNNING,
        Trial.worker_id == worker_id,
        Trial.attempt == attempt,
    )
