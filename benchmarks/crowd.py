"""8. A crowd of dashboard readers beside training: does the protocol lane hold? (issue 16, 7)

One API (uvicorn, SQLite unless told) and one real training worker (``hpsearch worker``, one
TensorFlow thread) run a long digits study (the example's model, no pruning), pinned together
to one core; a load generator pinned to another core plays ``--clients`` dashboard readers,
each reading in a closed loop with no pause (as the issue's generator did) a trial's page
(``GET .../trials/{n}``, what the trial page polls) and the first page of the trial table
(``GET .../trials?limit=50``, what the study page polls). Windows of ``--seconds`` alternate,
unloaded then loaded, ``--repeats`` times, so that whatever else the machine runs weighs on
both sides of each pair alike; the load generator stays up between windows, idle.

Per window: the epoch reports the API stored in it (``hps_trial_epochs.reported_at``), per
minute; the crowd's requests per second and latencies; the CPU the API, the worker (with its
trial process) and the crowd used. Target: loaded reports per minute at least 80 % of the
unloaded figure (the median of the pairs' loaded / unloaded ratios).

    python -m benchmarks.crowd [--seconds 10] [--repeats 6] [--clients 50] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from benchmarks._digits import digits_spec, unique, warm_up
from benchmarks.harness import (
    Row,
    Service,
    Workers,
    cpu_seconds,
    cpu_used,
    database,
    log,
    median,
    percentile,
    post_study,
    postgres_pids,
    print_table,
)
from tests.support import free_port, stop_process, wait_ready

TARGET = 0.8
TRIAL_PAGE = 50  # the dashboard's table page (service/dashboard/static/app.js)


def _utcnow() -> datetime:
    """Now as naive UTC: how the service stores ``reported_at``."""
    return datetime.now(UTC).replace(tzinfo=None)


# -- the crowd: a child process on a core of its own, one window per line of stdin ---------------


async def _reader(
    http: httpx.AsyncClient, window: dict[str, Any], until: float, seed: int
) -> tuple[list[float], int]:
    """One dashboard reader until ``until``: a trial page, then the trial table, in turn."""
    rng = random.Random(seed)
    study = window["study_id"]
    table = f"/api/v1/studies/{study}/trials?offset=0&limit={TRIAL_PAGE}&sort=number"
    latencies: list[float] = []
    errors, turn = 0, 0
    while time.monotonic() < until:
        path = f"/api/v1/studies/{study}/trials/{rng.randrange(window['numbers'])}"
        if turn % 2:
            path = table
        turn += 1
        started = time.perf_counter()
        try:
            if (await http.get(path)).status_code != 200:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - started)
        if window["think"]:
            await asyncio.sleep(window["think"])
    return latencies, errors


async def _crowd(api_url: str, clients: int) -> None:
    # One connection per reader, kept between windows, as each browser keeps its own.
    readers = [httpx.AsyncClient(base_url=api_url, timeout=120) for _ in range(clients)]
    try:
        for line in sys.stdin:
            window = json.loads(line)
            print("go", flush=True)  # the parent reads the CPU clocks now
            start, cpu, began = _utcnow(), time.process_time(), time.perf_counter()
            until = time.monotonic() + window["seconds"]
            results = await asyncio.gather(
                *(
                    _reader(http, window, until, window["seed"] + i)
                    for i, http in enumerate(readers)
                )
            )
            seen = {
                "start": start.isoformat(),
                "end": _utcnow().isoformat(),
                "seconds": time.perf_counter() - began,
                "cpu_seconds": time.process_time() - cpu,
                "latencies": [x for values, _ in results for x in values],
                "errors": sum(e for _, e in results),
            }
            print(json.dumps(seen), flush=True)
    finally:
        for http in readers:
            await http.aclose()


def crowd_child(api_url: str, clients: int, cpu: int | None) -> None:
    """The crowd's process: pinned to ``cpu``, one window per line of stdin (JSON), its
    figures as one line of stdout."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    asyncio.run(_crowd(api_url, clients))


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class Window:
    """One measured window: unloaded (``crowd`` is None) or loaded."""

    gaps: list[float]  # one per report: seconds since the trial's previous one (or NaN)
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core, by side
    crowd: dict[str, Any] | None = None

    @property
    def per_minute(self) -> float:
        return 60 * len(self.gaps) / self.seconds

    @property
    def epoch_seconds(self) -> list[float]:
        return [g for g in self.gaps if not math.isnan(g)]


def _reports(database_url: str, study_id: int, start: datetime, end: datetime) -> list[float]:
    """For each epoch report of ``study_id`` the API stored in [start, end), the seconds since
    the trial's previous report (NaN for a trial's first in the window): an epoch's training
    plus one report's round trip."""
    from sqlalchemy import create_engine, select

    from service.db.models import Trial, TrialEpoch

    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                select(TrialEpoch.trial_id, TrialEpoch.reported_at)
                .join(Trial, Trial.id == TrialEpoch.trial_id)
                .where(
                    Trial.study_id == study_id,
                    TrialEpoch.reported_at >= start,
                    TrialEpoch.reported_at < end,
                )
                .order_by(TrialEpoch.trial_id, TrialEpoch.reported_at)
            ).all()
    finally:
        engine.dispose()
    gaps, last = [], None
    for trial_id, at in rows:
        gaps.append(
            (at - last[1]).total_seconds() if last and last[0] == trial_id else float("nan")
        )
        last = (trial_id, at)
    return gaps


class Bench:
    """The service side (API + worker on one core) and the crowd (on another)."""

    def __init__(self, database_url: str, study_id: int, pids: dict[str, list[int]]) -> None:
        self.database_url, self.study_id, self.pids = database_url, study_id, pids

    def _cpu(self) -> dict[str, dict[int, float]]:
        # The worker's trial processes count as the worker's; serve's worker is not its API's.
        return {
            side: cpu_seconds(pids, children=side == "worker") for side, pids in self.pids.items()
        }

    def unloaded(self, seconds: float) -> Window:
        before, start, began = self._cpu(), _utcnow(), time.perf_counter()
        time.sleep(seconds)
        took, end, after = time.perf_counter() - began, _utcnow(), self._cpu()
        cpu = {k: 100 * cpu_used(before[k], v) / took for k, v in after.items()}
        return Window(_reports(self.database_url, self.study_id, start, end), took, cpu)

    def loaded(self, crowd: subprocess.Popen[str], window: dict[str, Any]) -> Window:
        assert crowd.stdin is not None and crowd.stdout is not None
        crowd.stdin.write(json.dumps(window) + "\n")
        crowd.stdin.flush()
        if crowd.stdout.readline().strip() != "go":
            raise RuntimeError(f"the crowd exited with {crowd.wait()}")
        before = self._cpu()
        line = crowd.stdout.readline()
        after = self._cpu()
        if not line:
            raise RuntimeError(f"the crowd exited with {crowd.wait()}")
        seen = json.loads(line)
        took = seen["seconds"]
        cpu = {k: 100 * cpu_used(before[k], v) / took for k, v in after.items()}
        cpu["crowd"] = 100 * seen["cpu_seconds"] / took  # the child's own account
        start, end = datetime.fromisoformat(seen["start"]), datetime.fromisoformat(seen["end"])
        return Window(_reports(self.database_url, self.study_id, start, end), took, cpu, seen)


@dataclass
class Serve:
    """``hpsearch serve --workers 1``: the API and its own local worker, as one machine runs
    them (the issue's setting); the worker is the API process's child."""

    database_url: str
    url: str = ""
    data: str = ""
    process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Serve:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HPSEARCH_DATABASE_URL": self.database_url,
            "HPSEARCH_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        self.data = tempfile.mkdtemp(prefix="hpsearch-bench-serve-")
        command = [sys.executable, "-m", "hpsearch", "serve", "--workers", "1"]
        command += ["--port", str(port), "--data-dir", self.data]
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait_ready(self.url, self.process, timeout=120, what="hpsearch serve")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, grace=60)
        shutil.rmtree(self.data, ignore_errors=True)

    def pids(self) -> dict[str, list[int]]:
        """The API (serve's own process) and its worker (the children, trial processes too)."""
        import psutil

        assert self.process is not None
        return {
            "API": [self.process.pid],
            "worker": [p.pid for p in psutil.Process(self.process.pid).children()],
        }


def _pins() -> tuple[int | None, int | None, str]:
    """(the service's core, the crowd's core, the split in words)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, "one core only: nothing pinned, the crowd shares it"
    return (
        cpus[0],
        cpus[1],
        f"API + worker + trial process on CPU {cpus[0]}, the crowd on CPU {cpus[1]}",
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.child:
        url, clients, cpu = args.child
        crowd_child(url, int(clients), None if cpu == "-" else int(cpu))
        return
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 6)
    clients = args.clients or (5 if args.quick else 50)
    service_cpu, crowd_cpu, split = _pins()
    if service_cpu is not None:
        # The API and the worker inherit this; the crowd's child moves itself to its own core.
        os.sched_setaffinity(0, {service_cpu})

    windows: list[tuple[Window, Window]] = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database(args.backend))
        if args.serve:
            api: Service | Serve = stack.enter_context(Serve(url))
        else:
            api = stack.enter_context(Service(url))
            workers = stack.enter_context(Workers(api.url, n=1, threads=1, inter_op_threads=1))
        if crowd_cpu is not None:
            os.sched_setaffinity(0, {crowd_cpu})  # this process only polls: off the service's
        log("crowd: warming up the worker")
        warm_up(api.url, 1)
        assert api.process is not None
        if isinstance(api, Serve):
            pids = api.pids()
        else:
            pids = {"API": [api.process.pid], "worker": [p.pid for p in workers.processes]}
        if args.backend == "postgresql":
            pids["PostgreSQL"] = postgres_pids()
        pin = "-" if crowd_cpu is None else str(crowd_cpu)
        crowd = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.crowd", "--child", api.url, str(clients), pin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            with httpx.Client(base_url=api.url, timeout=60) as http:
                spec = digits_spec(unique("crowd"), 10_000, args.epochs, 42, "none")
                study_id = post_study(http, spec)
                bench = Bench(url, study_id, pids)
                while http.get(f"/api/v1/studies/{study_id}").json()["finished"] < 1:
                    time.sleep(0.5)  # a trial page to read
                windows += _pairs(http, bench, crowd, study_id, repeats, seconds, args.think)
                http.post(f"/api/v1/studies/{study_id}/stop")
        finally:
            if crowd.stdin is not None:
                crowd.stdin.close()
            crowd.wait(60)

    _table(windows, seconds, clients, args, split)


def _pairs(
    http: httpx.Client,
    bench: Bench,
    crowd: subprocess.Popen[str],
    study_id: int,
    repeats: int,
    seconds: float,
    think: float,
) -> list[tuple[Window, Window]]:
    """``repeats`` windows of ``seconds`` unloaded, each followed by one under the crowd."""
    windows: list[tuple[Window, Window]] = []
    for r in range(repeats):
        log(f"crowd: pair {r + 1}/{repeats}: {seconds:g} s unloaded, then loaded")
        quiet = bench.unloaded(seconds)
        numbers = http.get(f"/api/v1/studies/{study_id}").json()["finished"] + 1
        window = {
            "study_id": study_id,
            "numbers": numbers,
            "seconds": seconds,
            "think": think,
            "seed": 1000 * r,
        }
        loaded = bench.loaded(crowd, window)
        assert loaded.crowd is not None
        log(
            f"  {quiet.per_minute:.1f} then {loaded.per_minute:.1f} reports/min "
            f"(ratio {loaded.per_minute / max(quiet.per_minute, 1e-9):.3f}) under "
            f"{len(loaded.crowd['latencies']) / loaded.seconds:.1f} requests/s"
        )
        windows.append((quiet, loaded))
    return windows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, help="each window (default 10; quick 3)")
    parser.add_argument("--repeats", type=int, help="unloaded/loaded pairs (default 6; quick 1)")
    parser.add_argument("--clients", type=int, help="dashboard readers (default 50; quick 5)")
    parser.add_argument(
        "--think", type=float, default=0.0, help="each reader's pause between requests, s"
    )
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial of the study")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="run `hpsearch serve --workers 1` (the API and its own worker) rather than an API "
        "and a separately started worker",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "CLIENTS", "CPU"), help=argparse.SUPPRESS
    )
    return parser


def _table(
    windows: list[tuple[Window, Window]],
    seconds: float,
    clients: int,
    args: argparse.Namespace,
    split: str,
) -> None:
    quiet = [q for q, _ in windows]
    loaded = [w for _, w in windows]
    ratios = [w.per_minute / q.per_minute if q.per_minute else 0.0 for q, w in windows]
    ratio = median(ratios)
    crowds = [w.crowd for w in loaded if w.crowd is not None]
    latencies = [x for c in crowds for x in c["latencies"]]
    rates = [len(c["latencies"]) / c["seconds"] for c in crowds]

    def periods(ws: list[Window]) -> list[float]:
        return [x for w in ws for x in w.epoch_seconds]

    def cpu(side: str, ws: list[Window]) -> float:
        return median([w.cpu.get(side, float("nan")) for w in ws])

    rows = [
        Row(
            "epoch reports per minute",
            median([w.per_minute for w in loaded]),
            median([q.per_minute for q in quiet]),
            target=f"ratio >= {TARGET}",
            met=ratio >= TARGET,
            ratio=ratio,
            digits=1,
        ),
        Row(
            "  each pair, loaded / unloaded",
            ", ".join(f"{w.per_minute:.0f}" for w in loaded),
            ", ".join(f"{q.per_minute:.0f}" for q in quiet),
        ),
        Row("  each pair's ratio", ", ".join(f"{x:.2f}" for x in ratios)),
        Row(
            "seconds from one epoch report to the next, p50",
            median(periods(loaded)) if periods(loaded) else None,
            median(periods(quiet)) if periods(quiet) else None,
            digits=3,
        ),
        Row(
            "  p90",
            percentile(periods(loaded), 90) if periods(loaded) else None,
            percentile(periods(quiet), 90) if periods(quiet) else None,
            digits=3,
        ),
        Row("crowd requests per second", median(rates), digits=1),
        Row("crowd latency p50, ms", 1000 * median(latencies) if latencies else None, digits=0),
        Row(
            "crowd latency p99, ms",
            1000 * percentile(latencies, 99) if latencies else None,
            digits=0,
        ),
        Row("crowd requests that failed", float(sum(int(c["errors"]) for c in crowds)), digits=0),
    ]
    for side in ("API", "worker", "PostgreSQL", "crowd"):
        if any(side in w.cpu for w in loaded):
            rows.append(
                Row(
                    f"CPU {side}, % of one core",
                    cpu(side, loaded),
                    cpu(side, quiet) if side != "crowd" else None,
                    digits=0,
                )
            )
    shares = [
        w.cpu["worker"] / (w.cpu["worker"] + w.cpu["API"])
        for w in loaded
        if w.cpu.get("worker", 0) + w.cpu.get("API", 0) > 0
    ]
    if shares:
        rows.append(Row("worker's share of the API + worker CPU, loaded", median(shares)))
    print_table(
        f"8. The protocol lane under a crowd: {clients} dashboard readers, {args.backend}, "
        f"{len(windows)} x ({seconds:g} s unloaded, {seconds:g} s loaded), median",
        "unloaded",
        rows,
        notes=[
            f"Pinned: {split}. "
            + (
                "`hpsearch serve --workers 1` (its worker's TensorFlow threads: serve's choice)"
                if args.serve
                else "An API and a worker started apart (one TensorFlow thread)"
            )
            + f"; the study: the example's model on digits, {args.epochs} epochs a trial, "
            "no pruning.",
            "Each reader in a closed loop"
            + (f" with {args.think:g} s pauses" if args.think else " with no pause")
            + f": GET .../trials/{{n}}, then GET .../trials?limit={TRIAL_PAGE}.",
            "Reports: epochs stored by the API in the window (hps_trial_epochs.reported_at); "
            "from one to the next: an epoch's training and a report's round trip. "
            "Ratio: the median of the pairs' loaded / unloaded.",
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
