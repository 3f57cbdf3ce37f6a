"""The rules of a study's and a trial's lifecycle: when a study is completed or failed, and the
history a re-run trial keeps. The states themselves are ``hpsearch.lifecycle``'s."""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update

from hpsearch.lifecycle import (
    ACTIVE_STUDY_STATUSES,
    FINISHED_TRIAL_STATUSES,
    StudyStatus,
    TrialStatus,
)
from hpsearch.protocol import MAX_REASON_CHARS
from service.context import ServiceContext
from service.db.models import Study, Trial
from service.db.session import unit_of_work

log = logging.getLogger(__name__)


# A study whose first trials all fail (for good) is failed: its spec is broken, not unlucky.
FAILED_STUDY_AFTER = 5


# How much of a re-run trial's history (its attempts and how each ended) its reason keeps: what
# one release may say.
_HISTORY_CHARS = MAX_REASON_CHARS


def history(previous: str | None, event: str) -> str:
    """A re-run trial's reason: how each earlier attempt ended, oldest first, then ``event``;
    only the newest part when it grows long."""
    text = f"{previous}; {event}" if previous else event
    return text if len(text) <= _HISTORY_CHARS else "..." + text[-(_HISTORY_CHARS - 3) :]


def update_study_status(ctx: ServiceContext, study_id: int) -> None:
    """Complete a study whose budget is spent or whose deadline passed; fail one whose first
    trials all failed. Runs after every result and in the reaper (idempotent)."""
    now = ctx.clock.now()
    with unit_of_work(ctx.sessions) as s:
        study = s.get(Study, study_id)
        if study is None or study.status not in ACTIVE_STUDY_STATUSES:
            return
        counts = dict(
            s.execute(
                select(Trial.state, func.count())
                .where(Trial.study_id == study_id)
                .group_by(Trial.state)
            ).all()
        )
        finished = sum(counts.get(k, 0) for k in FINISHED_TRIAL_STATUSES)
        running = counts.get("running", 0)
        status, reason = None, None
        if finished >= study.n_trials:
            status = StudyStatus.COMPLETED
        elif counts.get("failed", 0) >= min(
            FAILED_STUDY_AFTER, study.n_trials
        ) and finished == counts.get("failed", 0):
            status = StudyStatus.FAILED
            last = s.scalars(
                select(Trial.reason)
                .where(Trial.study_id == study_id, Trial.state == TrialStatus.FAILED)
                .order_by(Trial.finished_at.desc())
                .limit(1)
            ).first()
            reason = f"its first {finished} trials all failed; last: {last}"
        elif study.deadline_at is not None and study.deadline_at <= now and running == 0:
            status = StudyStatus.COMPLETED
            reason = f"time limit reached after {finished} of {study.n_trials} trials"
        if status is not None:
            s.execute(
                update(Study)
                .where(Study.id == study_id, Study.status.in_(ACTIVE_STUDY_STATUSES))
                .values(status=status, status_reason=reason, finished_at=now)
            )
            log.info("study %s", status, extra={"study": study.name, "finished": finished})
