"""7. Worker memory and gaps: RSS of the trial process over many short trials, and the idle
time between trials, with child recycling (the default) and without it (for comparison).

    python -m benchmarks.worker_memory [--trials 200] [--recycle-after 50] [--no-recycle]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from benchmarks.harness import Row, log, percentile, print_table
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
        "trial processes started": started,
        "trial process RSS after trial 1, MB": rss_mb[0],
        "trial process RSS, max MB": max(rss_mb),
        "trial process RSS, mean of the last 20, MB": statistics.fmean(tail),
        "worker (parent) RSS, MB": parent_mb,
        "gap between trials, median ms": 1000 * statistics.median(gaps),
        "gap between trials, p95 ms": 1000 * percentile(gaps, 95),
        "gap between trials, max ms": 1000 * max(gaps),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--recycle-after", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-recycle", action="store_true", help="also measure without recycling")
    parser.add_argument("--quick", action="store_true", help="6 trials of 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.recycle_after, args.epochs = 6, 3, 1
    log(f"worker memory: {args.trials} trials, recycling every {args.recycle_after}")
    ours = measure(args.trials, args.recycle_after, args.epochs)
    peer = None
    if args.no_recycle:
        log(f"worker memory: {args.trials} trials without recycling")
        peer = measure(args.trials, args.trials + 1, args.epochs)
    rows = [
        Row(key, value, None if peer is None else peer[key], digits=1)
        for key, value in ours.items()
    ]
    print_table(
        f"7. Worker memory and gaps over {args.trials} trials of {args.epochs} epochs "
        f"(recycling the trial process every {args.recycle_after})",
        "no recycling" if peer else "",
        rows,
        notes=["Gap: the time the worker waited per trial beyond the trial's own training."],
    )


if __name__ == "__main__":
    main()
