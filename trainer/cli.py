"""The trainer's commands: ``hpsearch trial`` (one trial in the foreground)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hpsearch.datasets import BUILTIN_DATASETS, DatasetSpec, validate_dataset
from hpsearch.errors import FieldError, InvalidSpecError
from hpsearch.params import TrainingSettings, TrialParams, validate_params
from hpsearch.protocol import DEFAULT_STOP_GRACE_SECONDS, MAX_STOP_GRACE_SECONDS
from hpsearch.results import METRIC_NAMES, TrialResult, TrialState

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the trainer's subcommands to the ``hpsearch`` parser."""
    trial = subparsers.add_parser(
        "trial",
        help="train one configuration in the foreground and print its result",
        description="Train one configuration for a few epochs, with a progress bar per epoch, "
        "and print the result (JSON with --json). Exit code: 0 when the trial ran (complete, "
        "diverged or timed out: see its state), 1 when it failed, 2 for invalid input.",
    )
    trial.add_argument(
        "--dataset",
        required=True,
        help=f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}), a .npz/.csv path, "
        "or a dataset spec as JSON",
    )
    trial.add_argument(
        "--params", default="{}", help="the trial's parameters as a JSON object, or @file.json"
    )
    trial.add_argument("--epochs", type=int, default=5)
    trial.add_argument("--seed", type=int, default=0)
    trial.add_argument("--objective", choices=METRIC_NAMES, default="val_accuracy")
    trial.add_argument(
        "--direction",
        choices=("maximize", "minimize"),
        default=None,
        help="default: minimize for losses, maximize for accuracies",
    )
    trial.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock limit of the trial",
    )
    trial.add_argument(
        "--threads", type=int, default=None, help="TensorFlow intra-op threads (default: all cores)"
    )
    trial.add_argument("--inter-op-threads", type=int, default=None)
    trial.add_argument("--json", action="store_true", help="print the result as JSON")
    trial.set_defaults(handler=run_trial_command)

    worker = subparsers.add_parser(
        "worker",
        help="train trials from a service until stopped",
        description="Ask the service at --api for trials, train each one, report every epoch, "
        "tell the result. SIGTERM (or Ctrl-C) asks for no more trials and gives the current one "
        "--stop-grace seconds to finish; then it is handed back (another worker re-runs it at "
        "once) and the worker exits 0. A second signal (1 s or more later), or SIGUSR1 at any "
        "time, hands it back at once. Exit codes: 0 "
        "stopped, 3 the API unreachable, 4 the token refused.",
    )
    worker.add_argument(
        "--api",
        default=os.environ.get("HPSEARCH_API_URL", "http://127.0.0.1:8000"),
        help="the API's URL (env HPSEARCH_API_URL)",
    )
    worker.add_argument(
        "--token",
        default=os.environ.get("HPSEARCH_TOKEN"),
        help="a worker token, when auth is on (env HPSEARCH_TOKEN)",
    )
    worker.add_argument(
        "--id",
        type=_worker_id,
        default=os.environ.get("HPSEARCH_WORKER_ID"),
        help="this worker's id in the service (default: host-pid-random)",
    )
    worker.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("HPSEARCH_WORKER_THREADS", "0")) or None,
        help="TensorFlow intra-op threads per trial (default: all cores)",
    )
    worker.add_argument("--inter-op-threads", type=int, default=None)
    worker.add_argument(
        "--recycle-after",
        type=int,
        default=50,
        help="replace the trial process after this many trials",
    )
    worker.add_argument(
        "--max-rss-mb",
        type=float,
        default=2048.0,
        help="replace the trial process once it uses this much memory",
    )
    worker.add_argument("--max-trials", type=int, default=None, help="exit after this many")
    worker.add_argument(
        "--connect-deadline",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up (exit 3) after the API is unreachable this long",
    )
    worker.add_argument(
        "--stop-grace",
        type=_stop_grace,
        default=os.environ.get("HPSEARCH_WORKER_STOP_GRACE", str(DEFAULT_STOP_GRACE_SECONDS)),
        metavar="SECONDS",
        help="on SIGTERM, how long the current trial may take to finish before it is handed "
        f"back (env HPSEARCH_WORKER_STOP_GRACE; default {DEFAULT_STOP_GRACE_SECONDS:g})",
    )
    worker.add_argument(
        "--dataset-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="where uploaded datasets are kept, by hash (env HPSEARCH_DATASET_CACHE; "
        "default ~/.cache/hpsearch/datasets)",
    )
    worker.set_defaults(handler=run_worker_command)


def _worker_id(value: str) -> str:
    """``--id``: what the protocol takes (letters, digits and ``_.:@-``, 200 at most)."""
    from pydantic import ValidationError

    from hpsearch.protocol import AskRequest

    try:
        AskRequest(worker_id=value)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: 1 to 200 letters, digits and _.:@- only"
        ) from None
    return value


def _stop_grace(value: str) -> float:
    """``--stop-grace``: seconds, from 0 to an hour (what serve's settings accept too)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= seconds <= MAX_STOP_GRACE_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be from 0 to {MAX_STOP_GRACE_SECONDS:g} seconds, got {value}"
        )
    return seconds


def parse_dataset_argument(value: str) -> DatasetSpec:
    """``digits`` -> built-in; ``data.npz`` -> a file; ``{"name": ...}`` -> a full spec."""
    value = value.strip()
    if value.startswith("{"):
        try:
            raw = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidSpecError([FieldError("dataset", f"not valid JSON: {exc}")]) from None
        return validate_dataset(raw)
    if value.endswith((".npz", ".csv")):
        return validate_dataset({"path": str(Path(value).expanduser().resolve())})
    return validate_dataset({"name": value})


def parse_params_argument(value: str) -> TrialParams:
    """A JSON object given inline, or ``@path`` to a JSON file."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise InvalidSpecError(
                [FieldError("params", f"cannot read {value[1:]}: {exc}")]
            ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError([FieldError("params", f"not valid JSON: {exc}")]) from None
    return validate_params(raw)


def run_trial_command(args: argparse.Namespace) -> int:
    """``hpsearch trial``: validate everything first, then train with a progress bar."""
    from rich.console import Console

    err = Console(stderr=True)
    try:
        dataset_spec = parse_dataset_argument(args.dataset)
        params = parse_params_argument(args.params)
        direction = args.direction or ("minimize" if "loss" in args.objective else "maximize")
        settings = (
            TrainingSettings(
                epochs=args.epochs,
                seed=args.seed,
                objective=args.objective,
                direction=direction,
                timeout_seconds=args.timeout,
            )
            if args.epochs >= 1
            else None
        )
        if settings is None:
            raise InvalidSpecError([FieldError("epochs", f"must be >= 1, got {args.epochs}")])
        from trainer.data import load_dataset

        data = load_dataset(dataset_spec)  # a bad file is refused before TensorFlow's import
        from trainer.training import configure_threads  # imports Keras

        configure_threads(args.threads, args.inter_op_threads)
        result = _train_with_progress(params, data, settings, err)
    except InvalidSpecError as exc:
        for e in exc.errors:
            err.print(f"[red]error[/red] {e.field}: {e.reason}", highlight=False)
        return EXIT_INVALID
    if args.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        _print_result(result, Console())
    return EXIT_FAILED if result.state is TrialState.FAILED else EXIT_OK


def _train_with_progress(
    params: TrialParams, data: Any, settings: TrainingSettings, console: Any
) -> TrialResult:
    from collections.abc import Mapping

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer.training import run_trial

    with Progress(
        TextColumn("[bold]trial[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metric]}"),
        console=console,
    ) as progress:
        task = progress.add_task(data.name, total=settings.epochs, metric="")

        class ProgressReporter:
            def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
                progress.update(
                    task,
                    completed=epoch,
                    metric=f"{settings.objective}={metrics[settings.objective]:.4f}",
                )
                return False

        return run_trial(params, data, settings, ProgressReporter())


def _print_result(result: TrialResult, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{result.state.value}" + (f": {result.reason}" if result.reason else ""))
    for column in ("epoch", *METRIC_NAMES, "seconds"):
        table.add_column(column, justify="right")
    for m in result.epochs:
        table.add_row(
            str(m.epoch), *(f"{m.value(k):.4f}" for k in METRIC_NAMES), f"{m.seconds:.2f}"
        )
    console.print(table)
    best = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    counts = result.parameters
    console.print(
        f"best {result.objective}: {best}; {result.epochs_run} epoch(s) in {result.seconds:.1f} s"
        + (
            f"; parameters {counts.total:,} ({counts.trainable:,} trainable, "
            f"{counts.non_trainable:,} non-trainable)"
            if counts
            else ""
        )
    )


def run_worker_command(args: argparse.Namespace) -> int:
    """``hpsearch worker``."""
    from hpsearch.client import ApiError
    from hpsearch.logs import configure_logging
    from trainer.executor import TrialExecutor
    from trainer.worker import Worker

    configure_logging(
        os.environ.get("HPSEARCH_LOG_LEVEL", "INFO"), os.environ.get("HPSEARCH_LOG_FORMAT", "json")
    )
    executor = TrialExecutor(
        recycle_after=args.recycle_after,
        max_rss_mb=args.max_rss_mb,
        intra_op_threads=args.threads,
        inter_op_threads=args.inter_op_threads,
    )
    try:
        worker = Worker(
            args.api,
            token=args.token,
            worker_id=args.id,
            executor=executor,
            connect_deadline_seconds=args.connect_deadline,
            max_trials=args.max_trials,
            dataset_cache=args.dataset_cache,
            stop_grace_seconds=args.stop_grace,
        )
    except ApiError as exc:  # a URL or token it cannot use: one line, as the other commands
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    return worker.run()
