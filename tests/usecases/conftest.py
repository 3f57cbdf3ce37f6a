"""The in-process tier: the service's use cases called directly, on a real SQLite file and a
real PostgreSQL database, with a clock that moves only when a test says so (as Vizier's
datastore tests and Optuna's storage tests do). No server, no worker process, no sleep: a lease
runs out by ``clock.advance(lease + 1)``.

What a user observes through HTTP (status codes, the error shape, auth) stays in the
end-to-end tier (``tests/service``); what the use cases decide (who gets which trial, when a
lease is lost, how often a trial is re-run, when a study ends, when a token expires) is tested
here, in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpsearch.protocol import (
    AskRequest,
    Assignment,
    EpochReport,
    Heartbeat,
    ReleaseRequest,
    TellRequest,
)
from hpsearch.results import TrialResult, TrialState
from service.clock import FakeClock
from service.config import Settings
from service.context import ServiceContext
from service.db.migrate import upgrade
from service.studies import service as studies
from service.trials import leases, reports
from tests.support import BACKENDS, make_database, spec

LEASE_SECONDS = 4.0
METRICS = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.5}


@pytest.fixture(scope="module", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A fresh, migrated database for the module: (its URL, a data directory)."""
    tmp = tmp_path_factory.mktemp(request.param)
    url, drop = make_database(request.param, tmp)
    ctx = ServiceContext.from_settings(Settings(database_url=url, data_dir=tmp))
    upgrade(ctx.engine)
    ctx.engine.dispose()
    yield url, tmp
    drop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ctx(database: tuple[str, Path], clock: FakeClock) -> Iterator[ServiceContext]:
    """The service's context on the module's database, reading time from ``clock``."""
    url, tmp = database
    settings = Settings(database_url=url, data_dir=tmp, lease_seconds=LEASE_SECONDS, max_trials=500)
    context = ServiceContext.from_settings(settings, clock)
    yield context
    context.engine.dispose()


def create(ctx: ServiceContext, name: str, **overrides: Any) -> dict[str, Any]:
    """A study from the tests' small spec; ``create_study``'s answer."""
    return studies.create_study(ctx, spec(name, **overrides))


class Worker:
    """A worker as the use cases see it: its id, and the protocol's requests."""

    def __init__(self, ctx: ServiceContext, worker_id: str) -> None:
        self.ctx, self.id = ctx, worker_id

    def ask(self) -> Assignment | None:
        request = AskRequest(worker_id=self.id)
        return leases.assign(self.ctx, request.worker_id, request.hostname)

    def report(self, a: Assignment, epoch: int, value: float = 0.5) -> Any:
        body = EpochReport(
            worker_id=self.id,
            attempt=a.attempt,
            epoch=epoch,
            metrics={**METRICS, "val_accuracy": value},
        )
        return reports.record_report(self.ctx, a.trial_id, body)

    def beat(self, a: Assignment) -> Any:
        body = Heartbeat(worker_id=self.id, attempt=a.attempt)
        return reports.heartbeat(self.ctx, a.trial_id, body)

    def tell(
        self, a: Assignment, state: TrialState = TrialState.COMPLETE, value: float = 0.5
    ) -> Any:
        result = TrialResult(
            state=state, epochs_run=1, best_value=value, final_value=value, seconds=0.1
        )
        body = TellRequest(worker_id=self.id, attempt=a.attempt, result=result)
        return reports.record_result(self.ctx, a.trial_id, body)

    def release(self, a: Assignment, cause: str, reason: str = "died") -> Any:
        body = ReleaseRequest(worker_id=self.id, attempt=a.attempt, cause=cause, reason=reason)
        return reports.release_trial(self.ctx, a.trial_id, body)
