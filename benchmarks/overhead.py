"""1. Overhead against plain Optuna: the same study run by a plain script and through the service.

The study is ``examples/digits-bn-clip.json``'s (model, training, search space) with 40 trials
of 5 epochs, a random sampler seeded with 42 and no pruning. Both sides train the same
configurations with the same seeds: the plain side uses the service's own sampler
(``service.optuna_bridge.build_sampler``, seeded per trial number) and seeds trial k with k, as
the service does.

(a) plain: a fresh interpreter imports TensorFlow, loads the data and trains two 1-epoch
    warm-up trials (as the service's worker is warmed), then times only
    ``study.optimize(objective, n_trials)`` with in-memory storage; the objective calls
    ``trainer.training.run_trial`` in-process with a reporter that calls ``trial.report`` and
    never prunes, and returns the trial's best value.
(b) service: one API on SQLite and one worker (``hpsearch worker``), started and warmed once;
    each repetition is a fresh study timed from its REST call to its completion.

Both sides use TensorFlow's default thread pools (no ``--threads``, inter-op threads left at
TensorFlow's default). The sides alternate (a, b, a, b, ...); the table gives medians, the ratio
(the median of the paired b/a ratios) and the overhead per trial.

    python -m benchmarks.overhead [--trials 40] [--epochs 5] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from datetime import datetime
from typing import Any

from benchmarks._digits import (
    digits_spec,
    run_child,
    unique,
    warm_up,
    write_result,
)
from benchmarks.harness import (
    Row,
    Service,
    StudyRun,
    Workers,
    database,
    log,
    median,
    print_table,
    run_study,
)

TARGET = 1.05


# -- (a) the plain script, run in a child interpreter ------------------------------------------


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    """``trial.suggest_*`` for an Optuna distribution (the public API a plain script uses)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def plain_child(config: dict[str, Any]) -> dict[str, Any]:
    """Run the study with plain Optuna in this process; time ``study.optimize`` only."""
    import optuna

    from hpsearch.datasets import DatasetSpec
    from hpsearch.params import TrainingSettings, validate_params
    from service.optuna_bridge import build_sampler, distributions
    from service.studies.spec import StudySpec
    from trainer.data import load_dataset
    from trainer.training import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = StudySpec.model_validate(config["spec"])
    data = load_dataset(DatasetSpec.model_validate(spec.dataset))
    fixed, space = spec.fixed_params, distributions(spec)
    metric, direction = spec.objective.metric, spec.objective.resolved_direction

    # Warm-up, as benchmarks' warm_up does for a worker: two 1-epoch trials before the clock.
    warm = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(2):
        params = warm.ask(fixed_distributions=space).params
        run_trial(validate_params({**fixed, **params}), data, TrainingSettings(epochs=1, seed=i))

    class OptunaReporter:
        def __init__(self, trial: Any) -> None:
            self.trial = trial

        def report(self, epoch: int, metrics: Any) -> bool:
            self.trial.report(metrics[metric], epoch)
            return False

    epochs: dict[int, int] = {}
    train_seconds: dict[int, float] = {}
    sampled: dict[int, dict[str, Any]] = {}

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        settings = TrainingSettings(
            epochs=spec.n_epochs, seed=trial.number, objective=metric, direction=direction
        )
        result = run_trial(
            validate_params({**fixed, **params}), data, settings, OptunaReporter(trial)
        )
        epochs[trial.number], sampled[trial.number] = result.epochs_run, params
        train_seconds[trial.number] = result.seconds
        return math.nan if result.best_value is None else float(result.best_value)

    study = optuna.create_study(
        direction=direction,
        sampler=build_sampler(spec.sampler),
        pruner=optuna.pruners.NopPruner(),
    )
    started = time.perf_counter()
    study.optimize(objective, n_trials=spec.n_trials)
    seconds = time.perf_counter() - started
    complete = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    return {
        "seconds": seconds,
        "best": study.best_value if complete else None,
        "epochs": sum(epochs.values()),
        "train_seconds": sum(train_seconds.values()),
        "params": [sampled[k] for k in sorted(sampled)],
    }


# -- the benchmark ------------------------------------------------------------------------------


def _breakdown(run: StudyRun) -> dict[str, float]:
    """Where the service's time went, from its own timestamps (naive UTC, one clock): from the
    study's creation to its first trial, per trial from ask to tell beyond ``run_trial``, and
    from one trial's tell to the next trial's ask."""

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value)

    trials = sorted(run.trials, key=lambda t: at(t["started_at"]))
    first = at(trials[0]["started_at"]) - at(run.study["created_at"])
    beyond = [
        t["duration_seconds"] - t["train_seconds"]
        for t in trials
        if t["duration_seconds"] is not None and t["train_seconds"] is not None
    ]
    gaps = [
        (at(b["started_at"]) - at(a["finished_at"])).total_seconds()
        for a, b in itertools.pairwise(trials)
        if a["finished_at"] is not None
    ]
    return {
        "run_trial": sum(t["train_seconds"] or 0.0 for t in trials),
        "first": first.total_seconds(),
        "beyond_ms": 1000 * median(beyond) if beyond else math.nan,
        "gap_ms": 1000 * median(gaps) if gaps else math.nan,
    }


def _same_configurations(plain: list[dict[str, Any]], ours: StudyRun) -> tuple[int, int]:
    """How many trials (by number) got the same sampled values on both sides, out of how many."""
    trials = sorted(ours.trials, key=lambda t: t["number"])
    same = 0
    for p, t in zip(plain, trials, strict=False):
        if all(
            (
                math.isclose(v, t["params"].get(k), rel_tol=1e-9)
                if isinstance(v, float) and isinstance(t["params"].get(k), float)
                else v == t["params"].get(k)
            )
            for k, v in p.items()
        ):
            same += 1
    return same, max(len(plain), len(trials))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, help="trials per study (default 40; quick 4)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 5; quick 2)")
    parser.add_argument("--repeats", type=int, help="repetitions of (a, b) (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=42, help="the random sampler's seed")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.2,
        help="seconds between the benchmark's status polls of the API (default 0.2)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import json
        from pathlib import Path

        write_result(args.child[1], plain_child(json.loads(Path(args.child[0]).read_text())))
        return
    trials = args.trials or (4 if args.quick else 40)
    epochs = args.epochs or (2 if args.quick else 5)
    repeats = args.repeats or (1 if args.quick else 3)

    plain: list[dict[str, Any]] = []
    ours: list[StudyRun] = []
    with (
        database("sqlite") as url,
        Service(url) as api,
        Workers(api.url, n=1, threads=None, inter_op_threads=0),
    ):
        log("overhead: warming up the worker")
        warm_up(api.url, 1)
        for r in range(repeats):
            spec = digits_spec(unique(f"overhead-{r + 1}"), trials, epochs, args.seed, "none")
            log(f"overhead: run {r + 1}/{repeats} (a) plain Optuna, {trials} trials")
            a = run_child("benchmarks.overhead", {"spec": spec})
            log(f"  (a) {a['seconds']:.1f} s, best {a['best']}")
            plain.append(a)
            log(f"overhead: run {r + 1}/{repeats} (b) the service, {trials} trials")
            b = run_study(api.url, spec, poll=args.poll)
            log(f"  (b) {b.seconds:.1f} s, best {b.best}, ratio {b.seconds / a['seconds']:.3f}")
            ours.append(b)

    a_s = [p["seconds"] for p in plain]
    b_s = [o.seconds for o in ours]
    ratio = median([b / a for a, b in zip(a_s, b_s, strict=True)])
    same = [_same_configurations(p["params"], o) for p, o in zip(plain, ours, strict=True)]
    parts = [_breakdown(o) for o in ours]
    a_best = [p["best"] for p in plain if p["best"] is not None]
    b_best = [o.best for o in ours if o.best is not None]
    rows = [
        Row(
            "wall s (study)",
            median(b_s),
            median(a_s),
            target=f"ratio <= {TARGET}",
            met=ratio <= TARGET,
            ratio=ratio,
            digits=1,
        ),
        Row(
            "overhead per trial, ms",
            1000 * median([(b - a) / trials for a, b in zip(a_s, b_s, strict=True)]),
            digits=0,
        ),
        Row(
            "in run_trial (sum over trials), s",
            median([x["run_trial"] for x in parts]),
            median([p["train_seconds"] for p in plain]),
            digits=1,
        ),
        Row(
            "outside run_trial, s",
            median([o.seconds - x["run_trial"] for o, x in zip(ours, parts, strict=True)]),
            median([p["seconds"] - p["train_seconds"] for p in plain]),
            digits=2,
        ),
        Row("  of which: study created -> 1st trial, s", median([x["first"] for x in parts])),
        Row(
            "  of which: ask -> tell beyond run_trial, ms/trial",
            median([x["beyond_ms"] for x in parts]),
            digits=0,
        ),
        Row("  of which: tell -> next ask, ms", median([x["gap_ms"] for x in parts]), digits=0),
        Row("trials per minute", 60 * trials / median(b_s), 60 * trials / median(a_s), digits=1),
        Row(
            "best val_accuracy",
            median(b_best) if b_best else None,
            median(a_best) if a_best else None,
            digits=4,
        ),
        Row(
            "epochs trained",
            median([o.epochs for o in ours]),
            median([p["epochs"] for p in plain]),
            digits=0,
        ),
        Row(
            "runs, s",
            ", ".join(f"{x:.1f}" for x in b_s),
            ", ".join(f"{x:.1f}" for x in a_s),
        ),
    ]
    print_table(
        f"1. Overhead against plain Optuna: digits, {trials} trials x {epochs} epochs, "
        f"random sampler (seed {args.seed}), no pruning; median of {repeats}",
        "plain Optuna",
        rows,
        notes=[
            "hpsearch: 1 API (uvicorn, SQLite) + 1 worker (trials in its child process), warmed "
            "once; each run a fresh study, timed from POST /studies to the study's completion "
            f"(polled every {args.poll:g} s).",
            "plain Optuna: study.optimize in one process (in-memory storage) calling run_trial "
            "in-process; TensorFlow imported, data loaded and 2 warm-up trials run before the "
            "clock.",
            "run_trial: the trial's own clock; the service's includes each epoch's report round "
            "trip (trial process -> worker -> API -> pruning answer), the plain one trial.report.",
            "Threads: TensorFlow's defaults on both sides. Runs alternate a, b; ratio = median "
            "of the paired b/a.",
            "Same configurations (trial-by-trial sampled values): "
            + ", ".join(f"{s}/{n}" for s, n in same),
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
