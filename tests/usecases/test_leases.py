"""Leases, driven by a fake clock: a trial is a worker's while it beats, and goes to another
worker, as the next attempt with the same parameters, once its lease has run out; a trial lost
too often fails for good; a study's time limit ends it; racing workers never exceed the budget."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hpsearch.lifecycle import StudyStatus, TrialStatus
from service.clock import FakeClock
from service.context import ServiceContext
from service.errors import ConflictError
from service.studies import reads
from service.trials import recovery
from tests.usecases.conftest import LEASE_SECONDS, Worker, create


def trial(ctx: ServiceContext, study: dict[str, Any], number: int = 0) -> dict[str, Any]:
    return reads.get_trial(ctx, study["id"], number)


def test_heartbeats_keep_the_lease_past_its_length(ctx: ServiceContext, clock: FakeClock) -> None:
    create(ctx, "beats", n_trials=1)
    beating, waiting = Worker(ctx, "beating"), Worker(ctx, "waiting")
    held = beating.ask()
    assert held is not None
    for _ in range(3 * int(LEASE_SECONDS)):  # three leases' time, a beat every second
        clock.advance(1)
        answer = beating.beat(held)
        assert answer.should_stop is False and answer.lease_seconds == LEASE_SECONDS
    recovery.reap(ctx)
    assert waiting.ask() is None  # still leased: nothing else to do in this study
    assert beating.tell(held).state == TrialStatus.COMPLETE


def test_a_lost_worker_s_trial_goes_to_the_next_worker_with_the_same_parameters(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    study = create(ctx, "lost-lease", n_trials=1)
    lost, rescuer = Worker(ctx, "lost"), Worker(ctx, "rescuer")
    first = lost.ask()
    assert first is not None
    lost.report(first, 1)
    clock.advance(LEASE_SECONDS - 0.5)
    assert rescuer.ask() is None  # not lost yet
    clock.advance(1)
    second = rescuer.ask()
    assert second is not None
    assert (second.trial_id, second.params, second.attempt) == (first.trial_id, first.params, 2)
    with pytest.raises(ConflictError):  # the old lease is gone
        lost.report(first, 2)
    rescuer.tell(second)
    final = reads.get_study(ctx, study["id"])
    assert final["status"] == StudyStatus.COMPLETED and final["finished"] == 1
    assert "re-run: worker lost stopped heartbeating" in trial(ctx, study)["reason"]


def test_a_trial_lost_too_often_fails_for_good(ctx: ServiceContext, clock: FakeClock) -> None:
    study = create(ctx, "lost-thrice", n_trials=1)  # max_retries 2: three attempts
    for attempt in range(1, 4):
        held = Worker(ctx, f"doomed-{attempt}").ask()
        assert held is not None and held.attempt == attempt
        clock.advance(LEASE_SECONDS + 1)
    assert Worker(ctx, "prober").ask() is None  # the fourth loss fails it instead
    recovery.reap(ctx)
    final = reads.get_study(ctx, study["id"])
    assert final["trial_counts"]["failed"] == 1 and final["finished"] == 1
    assert final["status"] == StudyStatus.COMPLETED  # its budget is spent, not its spec broken
    assert "its worker was lost 3 time(s)" in trial(ctx, study)["reason"]


def test_a_study_s_time_limit_starts_no_trial_after_its_deadline(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    study = create(ctx, "time-limit", n_trials=50, timeout_seconds=1.5)
    w = Worker(ctx, "timed")
    held = w.ask()
    assert held is not None
    clock.advance(2)
    w.tell(held)
    assert w.ask() is None
    recovery.reap(ctx)
    final = reads.get_study(ctx, study["id"])
    assert final["status"] == StudyStatus.COMPLETED and final["finished"] == 1
    assert final["status_reason"] == "time limit reached after 1 of 50 trials"


def test_the_budget_stays_exact_with_workers_racing_and_leases_running_out(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    study = create(ctx, "racing", n_trials=12)
    done: list[int] = []
    lock = threading.Lock()

    def work(worker_id: str) -> None:
        w = Worker(ctx, worker_id)
        while (held := w.ask()) is not None:
            try:
                w.tell(held)
            except ConflictError:  # re-let to another meanwhile: theirs now
                continue
            with lock:
                done.append(held.trial_id)

    threads = [threading.Thread(target=work, args=(f"racer-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    clock.advance(LEASE_SECONDS + 1)  # some leases run out under the racers' feet
    for t in threads:
        t.join()
    final = reads.get_study(ctx, study["id"])
    assert final["status"] == StudyStatus.COMPLETED
    assert final["trial_counts"]["complete"] == 12 and final["finished"] == 12
    rows = reads.list_trials(ctx, study["id"], None, None, 0, 100, "number", False)["data"]
    assert [r["number"] for r in rows] == list(range(12))
    assert sorted(set(done)) == sorted(done) and len(done) == 12


def test_stops_are_free_crashes_and_losses_count_apart(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    """Stops use no retry; crashes count against the spec's max_retries (1) and lost workers
    against HPSEARCH_MAX_RETRIES (2), each on its own."""
    study = create(ctx, "release-counts", n_trials=1, max_retries=1)
    w = Worker(ctx, "counting")
    held = w.ask()
    assert held is not None
    for _ in range(3):
        assert w.release(held, "stopping", "stopped").retries_left == 1
        held = w.ask()
        assert held is not None
    assert held.attempt == 4
    answer = w.release(held, "crashed", "the trial process died")
    assert (answer.state, answer.retries_left) == ("queued", 0)
    lost = Worker(ctx, "vanishing").ask()  # attempt 5, never heard of again
    assert lost is not None and lost.attempt == 5
    clock.advance(LEASE_SECONDS + 1)
    rescued = Worker(ctx, "rescuer").ask()
    assert rescued is not None and rescued.attempt == 6
    Worker(ctx, "rescuer").tell(rescued)
    assert reads.get_study(ctx, study["id"])["trial_counts"]["complete"] == 1
    reason = trial(ctx, study)["reason"]
    assert reason.startswith("attempt 1: stopped; re-run; attempt 2: stopped; re-run; ")
    assert "attempt 4: the trial process died; re-run; " in reason
    assert reason.endswith("re-run: worker vanishing stopped heartbeating (attempt 6)")
