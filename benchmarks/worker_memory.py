"""Worker memory and gaps: RSS of the trial process over many short trials, and the idle time
between trials, with child recycling (the default) and without it (for comparison).

    python benchmarks/worker_memory.py --trials 200 [--recycle-after 50] [--no-recycle]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil
from rich.console import Console
from rich.table import Table

from hpsearch.datasets import DatasetSpec
from hpsearch.params import TrainingSettings
from trainer.executor import TrialExecutor


def measure(trials: int, recycle_after: int, epochs: int) -> dict[str, float]:
    """Run ``trials`` short trials; return RSS and gap figures."""
    dataset = DatasetSpec(name="synthetic", n_samples=1_000, n_features=20, n_classes=4)
    gaps: list[float] = []
    rss_mb: list[float] = []
    with TrialExecutor(recycle_after=recycle_after, intra_op_threads=1, inter_op_threads=1) as ex:
        me = psutil.Process()
        for i in range(trials):
            t = time.perf_counter()
            result = ex.run(
                {"learning_rate": 0.05, "hidden_units": [64, 32]},
                dataset,
                TrainingSettings(epochs=epochs, seed=i),
            )
            # Time the caller waited beyond the trial's own training: start-up, hand-over, IPC.
            if i > 0:
                gaps.append(time.perf_counter() - t - result.seconds)
            rss_mb.append(ex.stats.last_child_rss / 2**20)
        parent_mb = me.memory_info().rss / 2**20
        started = ex.stats.children_started
    tail = rss_mb[-20:]
    return {
        "trials": trials,
        "children": started,
        "rss_first_mb": rss_mb[0],
        "rss_max_mb": max(rss_mb),
        "rss_last20_mean_mb": statistics.fmean(tail),
        "parent_rss_mb": parent_mb,
        "gap_median_ms": 1000 * statistics.median(gaps),
        "gap_p95_ms": 1000 * statistics.quantiles(gaps, n=20, method="inclusive")[-1],
        "gap_max_ms": 1000 * max(gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--recycle-after", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-recycle", action="store_true", help="also measure without recycling")
    args = parser.parse_args()
    runs = {
        f"recycle every {args.recycle_after}": measure(args.trials, args.recycle_after, args.epochs)
    }
    if args.no_recycle:
        runs["no recycling"] = measure(args.trials, args.trials + 1, args.epochs)
    table = Table(title=f"Worker memory and gaps, {args.trials} trials")
    table.add_column("figure")
    for name in runs:
        table.add_column(name, justify="right")
    for key in next(iter(runs.values())):
        table.add_row(key, *(f"{run[key]:.1f}" for run in runs.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
