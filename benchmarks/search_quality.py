"""2. Against KerasTuner, and 3. pruning savings: the digits study searched by hpsearch with each
pruner and by KerasTuner's RandomSearch and Hyperband, per seed, sides alternating.

The study is ``examples/digits-bn-clip.json``'s (model, training, search space): 40 trials of 5
epochs, random sampling seeded with the seed. Per seed, in this order:

1. KerasTuner Hyperband (max_epochs = epochs, factor 3, ``--kt-hyperband-iterations``); its
   epochs really trained (a Keras callback: Hyperband resumes trials from checkpoints) are E;
2. hpsearch, hyperband pruner, as many trials as it takes: stopped (``POST .../stop``) once the
   epochs done plus those in progress reach E, i.e. at KerasTuner's epoch budget;
3. KerasTuner RandomSearch, max_trials = 40;
4. hpsearch, median pruner (5 startup trials, 1 warm-up epoch); 5. no pruner; 6. hyperband
   pruner (min_resource 1, reduction factor 3); 40 trials each.

hpsearch runs as ``hpsearch serve`` deploys by default: one API on SQLite and 2 workers with one
intra-op thread each (one per core), started and warmed once; each study is timed from its REST
call to its end. KerasTuner runs in a fresh interpreter per search, with the same model builder
(``trainer.model.build_compiled_model``, as ``run_trial`` builds it), the same
search space (``hp.Float``/``hp.Choice``), the same data and batch size and TensorFlow's default
threads; TensorFlow is imported, the data loaded and one 1-epoch fit run before its clock, which
times ``tuner.search`` only. Best values are the best epoch's val_accuracy of the best trial
(hpsearch: of its completed trials). Figures are medians over the seeds; differences are the
medians of the per-seed differences.

    python -m benchmarks.search_quality [--seeds 0 1 2] [--trials 40] [--epochs 5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import httpx

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
    fetch_trials,
    log,
    median,
    post_study,
    print_table,
    run_study,
)

WALL_TARGET = 0.6  # ours (median pruner) / KerasTuner RandomSearch
RS_POINTS_TARGET = -0.5  # best value, ours - KerasTuner RandomSearch, in points
EPOCHS_TARGET = 0.5  # pruned / unpruned epochs
PRUNED_POINTS_TARGET = -1.0  # best value, pruned - unpruned, in points


# -- KerasTuner, run in a child interpreter ------------------------------------------------------


def kt_child(config: dict[str, Any]) -> dict[str, Any]:
    """One KerasTuner search in this process; time ``tuner.search`` only."""
    import keras
    import keras_tuner as kt

    from hpsearch.datasets import DatasetSpec
    from hpsearch.params import validate_params
    from service.studies.spec import Categorical, FloatRange, StudySpec
    from trainer.data import load_dataset
    from trainer.model import build_compiled_model

    spec = StudySpec.model_validate(config["spec"])
    data = load_dataset(DatasetSpec.model_validate(spec.dataset))
    fixed = spec.fixed_params
    seed = spec.sampler.seed

    def build(hp: Any) -> Any:
        sampled: dict[str, Any] = {}
        for name, p in spec.space.items():
            if isinstance(p, Categorical):
                sampled[name] = hp.Choice(name, p.choices)
            elif isinstance(p, FloatRange):
                scale = "log" if p.log else "linear"
                sampled[name] = hp.Float(name, p.low, p.high, step=p.step, sampling=scale)
            else:
                scale = "log" if p.log else "linear"
                sampled[name] = hp.Int(name, p.low, p.high, step=p.step, sampling=scale)
        params = validate_params({**fixed, **sampled})
        model = build_compiled_model(params, data.input_shape, data.n_classes)
        return model

    batch_size = validate_params(fixed).batch_size
    fit: dict[str, Any] = {
        "batch_size": batch_size,
        "validation_data": (data.x_val, data.y_val),
        "shuffle": True,
        "verbose": 0,
    }
    # Warm-up before the clock, as hpsearch's workers are warmed: one 1-epoch fit.
    build(kt.HyperParameters()).fit(data.x_train, data.y_train, epochs=1, **fit)
    keras.utils.clear_session()

    class EpochCounter(keras.callbacks.Callback):  # type: ignore[misc]
        """Counts epochs trained (a class attribute: KerasTuner deep-copies callbacks)."""

        epochs = 0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            EpochCounter.epochs += 1

    keras.utils.set_random_seed(seed or 0)
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-kt-") as tmp:
        common: dict[str, Any] = {
            "objective": kt.Objective("val_accuracy", direction="max"),
            "seed": seed,
            "directory": tmp,
            "project_name": "digits",
            "overwrite": True,
        }
        if config["tuner"] == "random":
            tuner = kt.RandomSearch(build, max_trials=spec.n_trials, **common)
        else:
            tuner = kt.Hyperband(
                build,
                max_epochs=spec.n_epochs,
                factor=config["factor"],
                hyperband_iterations=config["iterations"],
                **common,
            )
        started = time.perf_counter()
        tuner.search(
            data.x_train,
            data.y_train,
            epochs=spec.n_epochs,
            callbacks=[EpochCounter()],
            **fit,
        )
        seconds = time.perf_counter() - started
        failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
        if failed or not EpochCounter.epochs:
            raise RuntimeError(
                f"KerasTuner: {len(failed)} trial(s) failed, {EpochCounter.epochs} epochs trained"
            )
        best = tuner.oracle.get_best_trials(1)
        return {
            "seconds": seconds,
            "best": float(best[0].score) if best and best[0].score is not None else None,
            "epochs": EpochCounter.epochs,
            "trials": len(tuner.oracle.trials),
        }


# -- hpsearch ------------------------------------------------------------------------------------


def _figures(run: StudyRun) -> dict[str, Any]:
    return {
        "seconds": run.seconds,
        "best": run.best,
        "epochs": run.epochs,
        "trials": len(run.trials),
    }


def run_to_budget(api_url: str, spec: dict[str, Any], budget: int, poll: float) -> dict[str, Any]:
    """Run ``spec`` until the epochs done plus those in progress reach ``budget``, then stop it
    and wait for its running trials to stop (at their next epoch); timed to that point."""
    with httpx.Client(base_url=api_url, timeout=60) as http:
        started = time.perf_counter()
        study_id = post_study(http, spec)
        stopped = False
        while True:
            if not stopped:
                trials = fetch_trials(http, study_id)
                done = sum(int(t["epochs_run"]) for t in trials)
                running = sum(1 for t in trials if t["state"] == "running")
                if done + running >= budget:
                    answer = http.post(f"/api/v1/studies/{study_id}/stop")
                    if answer.status_code not in (200, 409):  # 409: it had just ended
                        answer.raise_for_status()
                    stopped = True
            study = http.get(f"/api/v1/studies/{study_id}").raise_for_status().json()
            if study["status"] not in ("queued", "running") and not study["trial_counts"].get(
                "running", 0
            ):
                break
            time.sleep(poll)
        seconds = time.perf_counter() - started
        trials = fetch_trials(http, study_id)
    if not stopped:
        log(f"  warning: {spec['name']} ended ({study['status']}) before the epoch budget")
    return {
        "seconds": seconds,
        "best": None if study["best_trial"] is None else float(study["best_trial"]["value"]),
        "epochs": sum(int(t["epochs_run"]) for t in trials),
        "trials": len(trials),
    }


# -- the benchmark ------------------------------------------------------------------------------


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return median(values) if values else None


def _diff_points(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> float | None:
    """Median over seeds of (our best - their best), in points."""
    diffs = [
        100.0 * (o["best"] - t["best"])
        for o, t in zip(ours, theirs, strict=True)
        if o["best"] is not None and t["best"] is not None
    ]
    return median(diffs) if diffs else None


def _ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> float:
    """Median over seeds of our figure / theirs."""
    return median([o[key] / t[key] for o, t in zip(ours, theirs, strict=True) if t[key]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2; quick 0")
    parser.add_argument("--trials", type=int, help="trials per study (default 40; quick 4)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 5; quick 2)")
    parser.add_argument(
        "--kt-hyperband-iterations",
        type=int,
        help="KerasTuner Hyperband's hyperband_iterations (default 3: 93 epochs at 5 epochs, "
        "factor 3; quick 1)",
    )
    parser.add_argument("--workers", type=int, default=2, help="hpsearch workers (default 2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads per worker (default 1)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between polls of the API (default 0.2)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import json
        from pathlib import Path

        write_result(args.child[1], kt_child(json.loads(Path(args.child[0]).read_text())))
        return
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    trials = args.trials or (4 if args.quick else 40)
    epochs = args.epochs or (2 if args.quick else 5)
    iterations = args.kt_hyperband_iterations or (1 if args.quick else 3)
    factor = 3

    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("kt_hb", "hb_budget", "kt_rs", "median", "none", "hyperband")
    }
    with (
        database("sqlite") as url,
        Service(url) as api,
        Workers(api.url, n=args.workers, threads=args.threads, inter_op_threads=1),
    ):
        log(f"search quality: warming up {args.workers} workers")
        warm_up(api.url, args.workers)
        for seed in seeds:

            def spec(pruner: str, n: int = trials, s: int = seed) -> dict[str, Any]:
                return digits_spec(unique(f"quality-{pruner}-{s}"), n, epochs, s, pruner)

            def record(key: str, figures: dict[str, Any], s: int = seed) -> None:
                log(
                    f"  seed {s} {key}: {figures['seconds']:.1f} s, best {figures['best']}, "
                    f"{figures['epochs']} epochs, {figures['trials']} trials"
                )
                runs[key].append(figures)

            log(f"search quality: seed {seed}: KerasTuner Hyperband")
            kt_hb = run_child(
                "benchmarks.search_quality",
                {
                    "tuner": "hyperband",
                    "spec": spec("none"),
                    "iterations": iterations,
                    "factor": factor,
                },
            )
            record("kt_hb", kt_hb)
            budget = int(kt_hb["epochs"])
            log(f"search quality: seed {seed}: hpsearch, hyperband pruner, {budget} epochs")
            hb_spec = spec("hyperband", 2 * budget)  # more than it can train in budget
            record("hb_budget", run_to_budget(api.url, hb_spec, budget, args.poll))
            log(f"search quality: seed {seed}: KerasTuner RandomSearch")
            record(
                "kt_rs",
                run_child("benchmarks.search_quality", {"tuner": "random", "spec": spec("none")}),
            )
            for pruner in ("median", "none", "hyperband"):
                log(f"search quality: seed {seed}: hpsearch, {pruner} pruner")
                record(pruner, _figures(run_study(api.url, spec(pruner), poll=args.poll)))

    _print_tables(runs, args, seeds, trials, epochs, iterations, factor)


def _print_tables(
    runs: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    seeds: list[int],
    trials: int,
    epochs: int,
    iterations: int,
    factor: int,
) -> None:
    n = len(seeds)
    ours_rs, kt_rs = runs["median"], runs["kt_rs"]
    wall_ratio = _ratio(ours_rs, kt_rs, "seconds")
    rs_points = _diff_points(ours_rs, kt_rs)
    hb_points = _diff_points(runs["hb_budget"], runs["kt_hb"])
    deployment = (
        f"hpsearch: 1 API (uvicorn, SQLite) + {args.workers} workers x {args.threads} intra-op "
        "thread(s), 1 inter-op thread (the default one-machine deployment), warmed once; "
        "studies timed from POST to completion."
    )
    kt_note = (
        "KerasTuner 1.4.8: a fresh process per search, same build_compiled_model, space, "
        "data, batch size; TensorFlow's default threads; tuner.search timed after a warm-up fit."
    )
    rows = [
        Row(
            "wall s: median pruner vs RandomSearch",
            _med(ours_rs, "seconds"),
            _med(kt_rs, "seconds"),
            target=f"ratio <= {WALL_TARGET}",
            met=wall_ratio <= WALL_TARGET,
            ratio=wall_ratio,
            digits=1,
        ),
        Row(
            "best val_accuracy: median pruner vs RS",
            _med(ours_rs, "best"),
            _med(kt_rs, "best"),
            digits=4,
        ),
        Row(
            "best, ours - RS, points",
            rs_points,
            target=f">= {RS_POINTS_TARGET}",
            met=None if rs_points is None else rs_points >= RS_POINTS_TARGET,
        ),
        Row(
            "epochs: median pruner vs RS", _med(ours_rs, "epochs"), _med(kt_rs, "epochs"), digits=0
        ),
        Row(
            "trials: median pruner vs RS", _med(ours_rs, "trials"), _med(kt_rs, "trials"), digits=0
        ),
        Row(
            "epochs: hyperband pruner (stopped) vs Hyperband",
            _med(runs["hb_budget"], "epochs"),
            _med(runs["kt_hb"], "epochs"),
            digits=0,
        ),
        Row(
            "best val_accuracy: hyperband pruner vs Hyperband",
            _med(runs["hb_budget"], "best"),
            _med(runs["kt_hb"], "best"),
            digits=4,
        ),
        Row(
            "best, ours - Hyperband, points",
            hb_points,
            target=">= 0",
            met=None if hb_points is None else hb_points >= 0,
        ),
        Row(
            "wall s: hyperband pruner (stopped) vs Hyperband",
            _med(runs["hb_budget"], "seconds"),
            _med(runs["kt_hb"], "seconds"),
            digits=1,
        ),
        Row(
            "trials: hyperband pruner (stopped) vs Hyperband",
            _med(runs["hb_budget"], "trials"),
            _med(runs["kt_hb"], "trials"),
            digits=0,
        ),
    ]
    print_table(
        f"2. Against KerasTuner: digits, {trials} trials x {epochs} epochs, seeds "
        f"{', '.join(map(str, seeds))}; medians over {n} seed(s)",
        "KerasTuner",
        rows,
        notes=[
            deployment,
            kt_note,
            f"RandomSearch: max_trials {trials}, {epochs} epochs; hpsearch: random sampler, "
            "median pruner (5 startup trials, 1 warm-up epoch).",
            f"Hyperband: max_epochs {epochs}, factor {factor}, hyperband_iterations {iterations}; "
            "hpsearch: hyperband pruner (min_resource 1, factor 3), stopped at Hyperband's "
            "epochs (done + in progress), so a few more may finish.",
            "Points: median over seeds of (ours - theirs) x 100; ratio: median of per-seed ratios.",
        ],
    )
    none = runs["none"]
    rows = []
    for pruner in ("median", "hyperband"):
        pruned = runs[pruner]
        epochs_ratio = _ratio(pruned, none, "epochs")
        diff = _diff_points(pruned, none)
        rows += [
            Row(
                f"{pruner}: epochs trained",
                _med(pruned, "epochs"),
                _med(none, "epochs"),
                target=f"ratio <= {EPOCHS_TARGET}",
                met=epochs_ratio <= EPOCHS_TARGET,
                ratio=epochs_ratio,
                digits=0,
            ),
            Row(
                f"{pruner}: best val_accuracy",
                _med(pruned, "best"),
                _med(none, "best"),
                digits=4,
            ),
            Row(
                f"{pruner}: best, pruned - none, points",
                diff,
                target=f">= {PRUNED_POINTS_TARGET} (within 1 point)",
                met=None if diff is None else diff >= PRUNED_POINTS_TARGET,
            ),
            Row(
                f"{pruner}: wall s",
                _med(pruned, "seconds"),
                _med(none, "seconds"),
                ratio=_ratio(pruned, none, "seconds"),
                digits=1,
            ),
        ]
    print_table(
        f"3. Pruning savings: digits, {trials} trials x {epochs} epochs, seeds "
        f"{', '.join(map(str, seeds))}; medians over {n} seed(s)",
        "no pruning",
        rows,
        notes=[
            deployment,
            "median: MedianPruner(5 startup trials, 1 warm-up epoch); hyperband: "
            f"HyperbandPruner(min_resource 1, max_resource {epochs}, reduction factor 3).",
            "Same seeded sampler: the three studies of a seed train the same configurations, "
            "with the same seeds.",
            "Ratios and points: medians over seeds of the per-seed figures.",
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
