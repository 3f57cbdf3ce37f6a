"""4. Scaling on one machine: trial throughput of 1 worker against 2 workers sharing its cores.

The study is ``examples/digits-bn-clip.json``'s (model, training, search space) with 24 trials of
5 epochs, a random sampler seeded with 42 and no pruning, so that every configuration trains the
same trials. One API on SQLite serves them all; each configuration gets freshly started workers,
warmed (2 one-epoch trials per worker) before its study, and stopped after it:

- 1 worker, ``--threads 2`` (one intra-op thread per core);
- 2 workers, ``--threads 1`` each (the cores split between them);
- 1 worker, ``--threads 1`` (an extra row: half the machine idle).

All with ``--inter-op-threads 1``. Configurations alternate within each repetition; throughput
is trials per minute, from the study's REST call to its completion. The ratio is 2 workers over
the better single worker (target >= 1.7), the median of the per-repetition ratios.

    python -m benchmarks.scaling [--trials 24] [--epochs 5] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from benchmarks._digits import digits_spec, unique, warm_up
from benchmarks.harness import Row, Service, Workers, database, log, median, print_table, run_study

TARGET = 1.7


@dataclass(frozen=True)
class Config:
    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''} x --threads {self.threads}"

    @property
    def short(self) -> str:
        return f"{self.workers}x{self.threads}"


ONE_BY_TWO, TWO_BY_ONE, ONE_BY_ONE = Config(1, 2), Config(2, 1), Config(1, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, help="trials per study (default 24; quick 4)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 5; quick 1)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=42, help="the random sampler's seed")
    parser.add_argument("--inter-op-threads", type=int, default=1, help="every worker's (1)")
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between polls of the API (default 0.2)"
    )
    parser.add_argument(
        "--no-single-thread",
        action="store_true",
        help="skip the extra 1 worker x --threads 1 configuration",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    args = parser.parse_args(argv)
    trials = args.trials or (4 if args.quick else 24)
    epochs = args.epochs or (1 if args.quick else 5)
    repeats = args.repeats or (1 if args.quick else 3)
    configs = [ONE_BY_TWO, TWO_BY_ONE] + ([] if args.no_single_thread else [ONE_BY_ONE])

    per_minute: dict[Config, list[float]] = {c: [] for c in configs}
    best: dict[Config, list[float]] = {c: [] for c in configs}
    with database("sqlite") as url, Service(url) as api:
        for r in range(repeats):
            # Alternate: each repetition starts where the previous one did not.
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for c in order:
                with Workers(
                    api.url, n=c.workers, threads=c.threads, inter_op_threads=args.inter_op_threads
                ):
                    log(f"scaling: run {r + 1}/{repeats}: {c.label}, warming up")
                    warm_up(api.url, c.workers)
                    name = unique(f"scaling-{c.workers}x{c.threads}-{r + 1}")
                    run = run_study(
                        api.url,
                        digits_spec(name, trials, epochs, args.seed, "none"),
                        poll=args.poll,
                    )
                rate = 60 * trials / run.seconds
                log(f"  {run.seconds:.1f} s, {rate:.1f} trials/min, best {run.best}")
                per_minute[c].append(rate)
                if run.best is not None:
                    best[c].append(run.best)

    singles = [c for c in configs if c.workers == 1]
    ratios = [
        per_minute[TWO_BY_ONE][i] / max(per_minute[c][i] for c in singles) for i in range(repeats)
    ]
    ratio = median(ratios)
    best_single = max(singles, key=lambda c: median(per_minute[c]))
    rows = []
    for c in configs:
        is_two = c == TWO_BY_ONE
        rows.append(
            Row(
                f"{c.label}: trials/min",
                median(per_minute[c]),
                median(per_minute[best_single]) if is_two else None,
                target=f"ratio >= {TARGET}" if is_two else "",
                met=(ratio >= TARGET) if is_two else None,
                ratio=ratio if is_two else None,
                digits=1,
            )
        )
    for c in configs:
        rows.append(Row(f"{c.label}: each run", ", ".join(f"{x:.1f}" for x in per_minute[c])))
    rows.append(
        Row(
            "best val_accuracy (" + ", ".join(c.short for c in configs) + ")",
            ", ".join(f"{median(best[c]):.4f}" for c in configs if best[c]),
        )
    )
    print_table(
        f"4. Scaling on one machine ({_cores()} cores): digits, {trials} trials x {epochs} "
        f"epochs, no pruning; median of {repeats}",
        "best 1 worker",
        rows,
        notes=[
            "1 API (uvicorn, SQLite); workers started afresh and warmed for each study; "
            f"--inter-op-threads {args.inter_op_threads} for every worker.",
            "Thread settings: " + "; ".join(c.label for c in configs) + ". 'each run': "
            "trials/min of every repetition, in order.",
            "Ratio: 2 workers / the better single worker (per repetition; median); the better "
            f"single worker by median: {best_single.label}.",
        ],
    )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main(sys.argv[1:])
