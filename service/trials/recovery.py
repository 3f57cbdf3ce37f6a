"""The reaper's pass: results not yet in Optuna are written there, trials that Optuna holds but
we never recorded (an API crash between the two) are adopted, and study statuses are brought up
to date."""

from __future__ import annotations

from sqlalchemy import select

from hpsearch.lifecycle import ACTIVE_STUDY_STATUSES
from service import optuna_bridge
from service.context import ServiceContext
from service.db.models import Study, Trial
from service.db.session import unit_of_work
from service.lifecycle import update_study_status
from service.studies.repository import spec_of
from service.trials.reports import finalize_in_optuna
from service.trials.repository import claim_slot, next_seq


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
                select(Study.id, Study.optuna_study_id).where(
                    Study.status.in_(ACTIVE_STUDY_STATUSES)
                )
            )
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
            slot = claim_slot(s, study_id, ctx.clock.now(), handed_out=False)
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
