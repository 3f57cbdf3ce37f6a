"""6. Large studies: the API with a study of 10,000 finished trials against one of 100.

Both studies are seeded into one fresh database (Optuna trials with their intermediate values,
our trials and epochs, as finished studies leave them), then a real API serves:

- ``GET /api/v1/studies/{id}`` and a page of 100 trials: p50 and p99 over 100 requests each;
- a new trial's worker protocol, ask + 5 reports + tell, with the real worker client, on each
  study in turn (the other one stopped, so that the ask goes to it), alternating the studies:
  the median of the cycles after the first, and the first one (a fresh API process reads the
  study's finished trials once).

    python -m benchmarks.large_study [--trials 10000] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import time

import httpx
from sqlalchemy import update

from benchmarks.dashboard_load import seed
from benchmarks.harness import Row, Service, database, log, median, percentile, print_table
from hpsearch.client import Client
from hpsearch.protocol import AskRequest, EpochReport, TellRequest
from hpsearch.results import EpochMetrics, TrialResult, TrialState
from service.config import Settings
from service.context import ServiceContext
from service.db.models import Study

SMALL = 100
METRICS = {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.5, "val_accuracy": 0.8}


def _seed_stopped(url: str, n: int, budget_left: int) -> int:
    """A study of ``n`` finished trials, stopped with ``budget_left`` trials still to run."""
    study_id = seed(url, n)
    ctx = ServiceContext.from_settings(Settings(database_url=url))
    with ctx.sessions() as s, s.begin():
        s.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(status="stopped", n_trials=n + budget_left, finished_at=None)
        )
    ctx.engine.dispose()
    return study_id


def _cycle(client: Client, worker_id: str) -> float:
    """ask + 5 reports + tell, as a worker does them; returns the seconds spent in requests."""
    started = time.perf_counter()
    assignment, _ = client.ask(AskRequest(worker_id=worker_id, hostname="bench"))
    if assignment is None:
        raise RuntimeError("no trial handed out")
    epochs = []
    for epoch in range(1, 6):
        epochs.append(EpochMetrics(epoch=epoch, seconds=0.0, **METRICS))
        answer = client.report(
            assignment.trial_id,
            EpochReport(
                worker_id=worker_id, attempt=assignment.attempt, epoch=epoch, metrics=METRICS
            ),
        )
        if answer.should_stop:
            break
    result = TrialResult(
        state=TrialState.PRUNED if answer.should_stop else TrialState.COMPLETE,
        objective="val_accuracy",
        direction="maximize",
        epochs=epochs,
        epochs_run=len(epochs),
        best_value=0.8,
        final_value=0.8,
        seconds=0.0,
    )
    client.tell(
        assignment.trial_id,
        TellRequest(worker_id=worker_id, attempt=assignment.attempt, result=result),
    )
    return time.perf_counter() - started


def _latencies(http: httpx.Client, path: str, n: int) -> list[float]:
    http.get(path).raise_for_status()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        http.get(path).raise_for_status()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=10, help="protocol cycles per study")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--quick", action="store_true", help="1,000 trials, 3 cycles")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.cycles, args.requests = 1_000, 3, 20
    with database(args.backend) as url:
        t = time.perf_counter()
        large = _seed_stopped(url, args.trials, args.cycles + 5)
        small = _seed_stopped(url, SMALL, args.cycles + 5)
        took = time.perf_counter() - t
        log(f"large study: seeded {args.trials:,} + {SMALL} trials in {took:.0f} s")
        with Service(url, env={"HPSEARCH_MAX_TRIALS": str(args.trials + 1000)}) as api:
            http = httpx.Client(base_url=api.url, timeout=120)
            gets: dict[str, tuple[float, float]] = {}
            for label, path in (
                ("GET study", "/api/v1/studies/{id}"),
                ("GET a page of 100 trials", "/api/v1/studies/{id}/trials?limit=100&offset=50"),
            ):
                times = {
                    study: _latencies(http, path.format(id=study), args.requests)
                    for study in (large, small)
                }
                for q in (50, 99):
                    gets[f"{label} p{q} ms"] = (
                        1000 * percentile(times[large], q),
                        1000 * percentile(times[small], q),
                    )
            client = Client(api.url, connect_deadline=60)
            cycles: dict[int, list[float]] = {large: [], small: []}
            for i in range(args.cycles + 1):
                for study in (small, large) if i % 2 == 0 else (large, small):
                    http.post(f"/api/v1/studies/{study}/resume").raise_for_status()
                    cycles[study].append(_cycle(client, "bench-large"))
                    http.post(f"/api/v1/studies/{study}/stop").raise_for_status()
            client.close()
            http.close()
    rows = [
        Row(
            key,
            ours,
            peer,
            target="<= 50" if key.endswith("p99 ms") else "",
            met=ours <= 50 if key.endswith("p99 ms") else None,
            digits=1,
        )
        for key, (ours, peer) in gets.items()
    ]
    warm = median(cycles[large][1:]), median(cycles[small][1:])
    rows.append(
        Row(
            "ask + 5 reports + tell, median ms",
            1000 * warm[0],
            1000 * warm[1],
            target="ratio <= 2",
            met=warm[0] / warm[1] <= 2,
            digits=1,
        )
    )
    rows.append(
        Row(
            "ask + 5 reports + tell, first after the API started, ms",
            1000 * cycles[large][0],
            1000 * cycles[small][0],
            digits=1,
        )
    )
    print_table(
        f"6. Large studies: {args.trials:,} finished trials on {args.backend} "
        f"({args.requests} GETs, {args.cycles} protocol cycles per study after the first)",
        f"the same, {SMALL}-trial study",
        rows,
        notes=["Each cycle: the real worker client; the study's default median pruner decides."],
    )


if __name__ == "__main__":
    main()
