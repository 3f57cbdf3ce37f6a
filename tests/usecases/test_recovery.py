"""The reaper's pass, called directly: an Optuna study renamed by hand (with Optuna's tools, or
in its tables) is still found by id, by the reaper as by the workers' requests."""

from __future__ import annotations

import optuna
from sqlalchemy import text

from hpsearch.lifecycle import StudyStatus
from service.context import ServiceContext
from service.studies import reads
from service.trials import recovery
from tests.usecases.conftest import Worker, create


def test_an_optuna_study_renamed_by_hand_is_still_reaped_and_trained(ctx: ServiceContext) -> None:
    study = create(ctx, "renamed-in-optuna", n_trials=3)
    worker = Worker(ctx, "renamed-worker")
    first = worker.ask()
    assert first is not None
    worker.report(first, 1, 0.4)
    with ctx.engine.begin() as conn:
        conn.execute(
            text("UPDATE studies SET study_name = 'renamed-by-hand' WHERE study_name = :name"),
            {"name": f"renamed-in-optuna#{study['id']}"},
        )
    recovery.reap(ctx)  # it raised on a study it looked up by name
    worker.report(first, 2, 0.45)
    worker.tell(first, value=0.45)
    for value in (0.5, 0.6):
        trial = worker.ask()
        assert trial is not None
        worker.report(trial, 1, value)
        worker.tell(trial, value=value)
        recovery.reap(ctx)

    assert reads.get_study(ctx, study["id"])["status"] == StudyStatus.COMPLETED
    renamed = optuna.load_study(study_name="renamed-by-hand", storage=ctx.url)
    assert sorted(t.value for t in renamed.trials) == [0.45, 0.5, 0.6]
    assert renamed.trials[0].intermediate_values == {1: 0.4, 2: 0.45}
