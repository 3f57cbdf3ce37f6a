"""The workers the database knows: who is live, what each holds. Read by ``GET /api/v1/workers``
and by ``hpsearch serve`` while it supervises its local workers and drains on shutdown.

A worker is *live* when it was seen (an ask, a heartbeat, a result) within the lease time: a
worker that trains heartbeats every quarter of a lease, an idle one asks every second or so.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from hpsearch.lifecycle import TrialStatus
from service.context import ServiceContext
from service.db.models import Study, Trial, Worker


def list_workers(
    ctx: ServiceContext, offset: int, limit: int, live_only: bool = False
) -> dict[str, Any]:
    """Workers, the most recently seen first, each with the trial it holds:
    ``{data, count, live, offset, limit}``."""
    now = ctx.clock.now()
    seen_since = now - timedelta(seconds=ctx.settings.lease_seconds)
    where = [Worker.last_seen >= seen_since] if live_only else []
    with ctx.sessions() as s:
        count = s.scalar(select(func.count()).select_from(Worker).where(*where)) or 0
        live = s.scalar(select(func.count()).where(Worker.last_seen >= seen_since)) or 0
        workers = list(
            s.scalars(
                select(Worker)
                .where(*where)
                .order_by(Worker.last_seen.desc(), Worker.id)
                .offset(offset)
                .limit(limit)
            )
        )
        held: dict[str, dict[str, Any]] = {}
        if workers:
            rows = s.execute(
                select(
                    Trial.worker_id,
                    Trial.id,
                    Trial.study_id,
                    Study.name,
                    Trial.number,
                    Trial.attempt,
                    Trial.lease_expires_at,
                )
                .join(Study, Study.id == Trial.study_id)
                .where(
                    Trial.state == TrialStatus.RUNNING, Trial.worker_id.in_([w.id for w in workers])
                )
                .order_by(Trial.id)
            )
            for worker_id, trial_id, study_id, study, number, attempt, lease in rows:
                held.setdefault(
                    str(worker_id),
                    {
                        "trial_id": trial_id,
                        "study_id": study_id,
                        "study_name": study,
                        "number": number,
                        "attempt": attempt,
                        "lease_expires_at": lease,
                    },
                )
        data = [
            {
                "id": w.id,
                "hostname": w.hostname,
                "first_seen": w.first_seen,
                "last_seen": w.last_seen,
                "seconds_since_seen": round(max((now - w.last_seen).total_seconds(), 0.0), 3),
                "live": w.last_seen >= seen_since,
                "trials_finished": w.trials_finished,
                "trial": held.get(w.id),
            }
            for w in workers
        ]
    return {"data": data, "count": count, "live": live, "offset": offset, "limit": limit}


def trials_in_hand(ctx: ServiceContext, trial_ids: Collection[int]) -> list[int]:
    """Those of ``trial_ids`` still running under a live lease: a worker is training them and
    will report, hand them back, or lose them when the lease runs out."""
    if not trial_ids:
        return []
    with ctx.sessions() as s:
        return list(
            s.scalars(
                select(Trial.id).where(
                    Trial.id.in_(list(trial_ids)),
                    Trial.state == TrialStatus.RUNNING,
                    Trial.worker_id.is_not(None),
                    Trial.lease_expires_at > ctx.clock.now(),
                )
            )
        )


def held_by(ctx: ServiceContext, worker_id: str) -> list[tuple[int, int]]:
    """(trial id, attempt) of each running trial leased to ``worker_id``."""
    with ctx.sessions() as s:
        rows = s.execute(
            select(Trial.id, Trial.attempt).where(
                Trial.worker_id == worker_id, Trial.state == TrialStatus.RUNNING
            )
        )
        return [(int(trial_id), int(attempt)) for trial_id, attempt in rows]
