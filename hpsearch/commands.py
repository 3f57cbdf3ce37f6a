"""The ``study`` and ``dataset`` commands: a running API's studies and datasets, over HTTP.

They need only the client (``pip install 'hpsearch[client]'``): no database, no Optuna, no
TensorFlow. Every failure is an :class:`hpsearch.client.ApiError`, reported the same way by
``_reporting_api_errors``: one line (and one per field at fault), the exit code of its kind, a
traceback only with --debug."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hpsearch.client import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    ApiError,
    Client,
)
from hpsearch.results import TrialState

DEFAULT_API = os.environ.get("HPSEARCH_API_URL", "http://127.0.0.1:8000")

_EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 any other failure (a server error, a study that ended stopped or "
    "failed); 2 invalid input (a bad argument or file, or the API's 422); 3 the API cannot be "
    "reached; 4 the API refused the token (401/403); 5 not found (404); 6 a conflict with the "
    "resource's state (409); 130 interrupted (Ctrl-C). Errors are one line on stderr; --debug "
    "adds the traceback."
)
# A trial runs, then ends in one of the trainer's states.
TRIAL_STATES = ("running", *(state.value for state in TrialState))


def register(subparsers: Any) -> None:
    """``study`` and ``dataset``: commands that talk to a running API."""
    # --api, --timeout and --debug work before or after the action (``hpsearch study --api URL
    # list`` and ``hpsearch study list --api URL``): on the action they default to nothing, so
    # that they never overwrite the group's value.
    common = argparse.ArgumentParser(add_help=False)
    _client_options(common, argparse.SUPPRESS)

    study = subparsers.add_parser(
        "study",
        help="launch and manage studies through the API",
        description="Launch, watch and manage studies on a running API (--api). With "
        "HPSEARCH_AUTH on, set HPSEARCH_TOKEN to a user token.",
        epilog=_EXIT_CODES_HELP,
    )
    _client_options(study, None)
    actions = study.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, helptext: str, handler: Any, **kw: Any) -> argparse.ArgumentParser:
        """An action of the group being built (``actions``), with the common options."""
        p: argparse.ArgumentParser = actions.add_parser(
            name, help=helptext, parents=[common], epilog=_EXIT_CODES_HELP, **kw
        )
        p.set_defaults(handler=_reporting_api_errors(handler))
        return p

    create = action("create", "launch a study from a JSON spec file", run_study_create)
    create.add_argument("spec", type=Path)
    create.add_argument("--wait", action="store_true", help="show progress until it ends")
    action("list", "studies, newest first", run_study_list)
    for name, helptext in (
        ("show", "one study, as JSON"),
        ("stop", "stop a study"),
        ("resume", "resume a stopped study"),
        ("wait", "show progress until a study ends (exit 0 when it completed, 1 otherwise)"),
    ):
        action(name, helptext, run_study_action).add_argument("study_id", type=int)
    trials = action(
        "trials",
        "a table of a study's trials",
        run_study_trials,
        description="A study's trials, by number: state, objective value, each searched "
        "parameter, epochs run and duration (every page fetched).",
    )
    trials.add_argument("study_id", type=int)
    trials.add_argument("--state", choices=TRIAL_STATES, help="only trials in this state")
    trials.add_argument("--json", action="store_true", help="the trials as the API gives them")
    best = action(
        "best",
        "the best trial: value and parameters",
        run_study_best,
        description="The study's best completed trial. --json prints its parameters alone, "
        "ready to reuse: `hpsearch study best 3 --json > best.json; hpsearch trial --params "
        "@best.json --dataset digits`.",
    )
    best.add_argument("study_id", type=int)
    best.add_argument("--json", action="store_true", help="the parameters as a JSON object")
    delete = action(
        "delete",
        "delete a study and its trials",
        run_study_delete,
        description="Delete a study, its trials and Optuna's copy of it, after asking (a "
        "running study's workers drop its trials). --yes deletes without asking, as a script "
        "needs; without it, a 'y' is read from stdin.",
    )
    delete.add_argument("study_id", type=int)
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")

    dataset = subparsers.add_parser(
        "dataset",
        help="upload and manage datasets through the API",
        description="Upload and manage datasets on a running API (--api).",
        epilog=_EXIT_CODES_HELP,
    )
    _client_options(dataset, None)
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)
    upload = action(
        "upload",
        "upload an .npz or .csv file; prints its id",
        run_dataset_upload,
        description="Upload a dataset. An .npz holds x_train and y_train (and optionally x_val, "
        "y_val, x_test, y_test); a .csv holds a label column and numeric or text features "
        "(text columns are one-hot encoded). Use the printed id in a study spec: "
        '"dataset": {"id": "ds_..."}.',
    )
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="default: the file name without its suffix")
    upload.add_argument("--label-column", help="csv only (default: label)")
    upload.add_argument("--format", choices=("npz", "csv"), help="default: from the suffix")
    action("list", "uploaded datasets", run_dataset_list)
    for name, helptext in (("show", "one dataset, as JSON"), ("delete", "delete a dataset")):
        action(name, helptext, run_dataset_action).add_argument("dataset_id")


def _client_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--api, --timeout and --debug; ``default`` None gives each its real default."""
    unset = default is not None
    parser.add_argument(
        "--api",
        default=default if unset else DEFAULT_API,
        help=f"the API's URL (env HPSEARCH_API_URL; default {DEFAULT_API})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default if unset else None,
        help="how long to wait for each answer (default 30; an upload 600)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default if unset else False,
        help="print the traceback of an error, not only its one line",
    )


def print_table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[str]], no_wrap: Sequence[str] = ()
) -> None:
    """A rich table of ``rows`` that never cuts a cell: on a narrow terminal long values wrap at
    spaces or fold onto the next line rather than end in an ellipsis, and the cells lose their
    padding first. The ``no_wrap`` columns (ids) keep each cell on one line."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    for header in headers:
        table.add_column(header, no_wrap=header in no_wrap, overflow="fold")
    for row in rows:
        table.add_row(*row)
    unbounded = console.options.update_width(1_000_000)
    if console.measure(table, options=unbounded).maximum > console.width:
        table.padding = (0, 0)  # a narrow terminal: the room goes to the values
    console.print(table)


def _api(args: argparse.Namespace, timeout: float = 30.0) -> Client:
    """The client for this command's --api, --timeout and HPSEARCH_TOKEN."""
    token = os.environ.get("HPSEARCH_TOKEN") or None
    return Client(args.api, token, timeout=args.timeout or timeout)


def _reporting_api_errors(handler: Any) -> Any:
    """``handler``, with its ApiErrors reported as one line each (and the traceback with
    --debug) and turned into their exit codes."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
        except ApiError as exc:
            if getattr(args, "debug", False):
                traceback.print_exc()
            print(exc.message, file=sys.stderr)
            for line in exc.details:
                print(f"  {line}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        return code

    return run


# -- study ---------------------------------------------------------------------------------------


def run_study_create(args: argparse.Namespace) -> int:
    """POST a spec file; with --wait, show progress until the study ends."""
    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.spec}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with _api(args) as api:
        study = api.create_study(spec, subject=f"the study spec in {args.spec}")
        print(f"study {study['id']} ({study['name']}) created: {study['n_trials']} trials")
        if args.wait:
            return _wait(api, study["id"])
    return EXIT_OK


def run_study_list(args: argparse.Namespace) -> int:
    """A table of studies."""
    with _api(args) as api:
        studies, count = api.studies()
    print_table(
        f"{count} studies",
        ("id", "name", "status", "finished", "pruned", "failed", "best", "created"),
        (
            (
                str(s["id"]),
                s["name"],
                s["status"],
                f"{s['finished']}/{s['n_trials']}",
                str(s["trial_counts"]["pruned"]),
                str(sum(s["trial_counts"][k] for k in ("failed", "diverged", "timed_out"))),
                "" if s["best_trial"] is None else f"{s['best_trial']['value']:.4f}",
                timestamp(s["created_at"]),
            )
            for s in studies
        ),
        no_wrap=("id",),
    )
    return EXIT_OK


def run_study_action(args: argparse.Namespace) -> int:
    """show / stop / resume / wait."""
    with _api(args) as api:
        if args.action == "wait":
            return _wait(api, args.study_id)
        if args.action == "show":
            study = api.study(args.study_id)
        else:
            study = api.study_action(args.study_id, args.action)
        print(json.dumps(study, indent=2))
    return EXIT_OK


def run_study_trials(args: argparse.Namespace) -> int:
    """A table (or JSON) of a study's trials, every page fetched."""
    with _api(args) as api:
        study = api.study(args.study_id)
        trials, count = api.trials(args.study_id, args.state)
    if args.json:
        print(json.dumps(trials, indent=2))
        return EXIT_OK
    searched: list[str] = study["searched"]
    print_table(
        f"study {study['id']} ({study['name']}): {count} "
        + (f"{args.state} trials" if args.state else f"trials of {study['n_trials']}"),
        ("#", "state", study["objective"]["metric"], *searched, "epochs", "duration"),
        (
            (
                str(t["number"]),
                t["state"],
                "" if t["value"] is None else f"{t['value']:.4f}",
                *(_param_text(t["params"].get(name)) for name in searched),
                str(t["epochs_run"]),
                "" if t["duration_seconds"] is None else f"{t['duration_seconds']:.1f} s",
            )
            for t in trials
        ),
        no_wrap=("#",),
    )
    return EXIT_OK


def run_study_best(args: argparse.Namespace) -> int:
    """The best completed trial's value and parameters (--json: the parameters alone)."""
    with _api(args) as api:
        study = api.study(args.study_id)
    best = study["best_trial"]
    if best is None:
        print(
            f"error: study {study['id']} ({study['name']}) has no completed trial yet "
            f"({study['status']}, {study['finished']} of {study['n_trials']} finished)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps(best["params"], indent=2, sort_keys=True))
        return EXIT_OK
    objective = study["objective"]
    print(
        f"study {study['id']} ({study['name']}): best trial {best['number']}, "
        f"{objective['metric']} {best['value']:.4f} ({objective['direction']})"
    )
    searched = [name for name in study["searched"] if name in best["params"]]
    fixed = sorted(name for name in best["params"] if name not in searched)
    for title, names in (("searched", searched), ("fixed", fixed)):
        if names:
            print(f"{title}:")
            for name in names:
                print(f"  {name}: {_param_text(best['params'][name])}")
    return EXIT_OK


def run_study_delete(args: argparse.Namespace) -> int:
    """Delete a study after a 'y' on stdin, or at once with --yes."""
    with _api(args) as api:
        study = api.study(args.study_id)
        if not args.yes:
            sys.stderr.write(
                f"delete study {study['id']} ({study['name']}, {study['status']}) and its "
                f"{sum(study['trial_counts'].values())} trials? [y/N] "
            )
            sys.stderr.flush()
            answer = sys.stdin.readline().strip().lower()
            if not sys.stdin.isatty():  # the answer was not echoed: end the prompt's line
                sys.stderr.write("\n")
            if answer not in ("y", "yes"):
                print(
                    f"study {study['id']} not deleted"
                    + ("" if answer else " (no answer: pass --yes to delete without asking)"),
                    file=sys.stderr,
                )
                return EXIT_FAILED
        api.delete_study(args.study_id)
    print(f"study {study['id']} ({study['name']}) deleted")
    return EXIT_OK


def _param_text(value: Any) -> str:
    """A parameter's value, short: floats to 4 significant digits, lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def timestamp(value: str) -> str:
    """An API timestamp (ISO 8601) as ``2024-05-01 12:34:56``: it wraps at the space."""
    return value[:19].replace("T", " ")


def _wait(api: Client, study_id: int) -> int:
    """A progress bar with the trial counts and an ETA until the study ends; exit 0 when it
    completed, 1 when it ended otherwise, 130 on Ctrl-C (the study goes on)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    path, subject = f"/api/v1/studies/{study_id}", f"study {study_id}"
    eta = _Eta()
    try:
        s = api.json("GET", path, subject=subject)  # before the bar: no bar for a missing study
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            # On a narrow terminal the counts wrap under each other; the bar keeps its numbers.
            TextColumn("{task.fields[info]}", table_column=Column(overflow="fold")),
        ) as progress:
            task = progress.add_task(subject, total=s["n_trials"], info="", eta="")
            while True:
                c, best = s["trial_counts"], s["best_trial"]
                info = (
                    f"{s['status']}, running {c['running']}, pruned {c['pruned']}, "
                    f"failed {c['failed'] + c['diverged'] + c['timed_out']}"
                    + ("" if best is None else f", best {best['value']:.4f}")
                )
                progress.update(
                    task,
                    total=s["n_trials"],
                    completed=s["finished"],
                    info=info,
                    eta=eta.update(s["status"], s["finished"], s["n_trials"]),
                )
                if s["status"] not in ("queued", "running"):
                    break
                time.sleep(1.0)
                s = api.json("GET", path, subject=subject)
    except KeyboardInterrupt:
        print(
            f"interrupted: study {study_id} goes on (`hpsearch study wait {study_id}` to watch "
            f"it again, `hpsearch study stop {study_id}` to stop it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"study {study_id}: {s['status']}"
        + (f" ({s['status_reason']})" if s["status_reason"] else "")
    )
    return EXIT_OK if s["status"] == "completed" else EXIT_FAILED


class _Eta:
    """Time left, from the trials finished per second since this command first saw the study
    running (a queued study's wait is not counted; a study watched mid-run starts afresh)."""

    def __init__(self) -> None:
        self._since: tuple[float, int] | None = None

    def update(self, status: str, finished: int, total: int) -> str:
        """The ETA as ``eta 0:01:23`` (``eta -:--:--`` until a trial has finished)."""
        if status not in ("queued", "running"):
            return "eta 0:00:00" if finished >= total else ""
        now = time.monotonic()
        if status == "queued" or self._since is None:
            self._since = (now, finished)
            return "eta -:--:--"
        started, finished_then = self._since
        done = finished - finished_then
        if done <= 0:
            return "eta -:--:--"
        left = (total - finished) * (now - started) / done
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return f"eta {hours}:{minutes:02d}:{seconds:02d}"


# -- datasets ------------------------------------------------------------------------------------


class _ProgressReader:
    """A file whose reads advance a progress bar (httpx reads the upload through it)."""

    def __init__(self, f: Any, advance: Any) -> None:
        self._f, self._advance = f, advance

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self._f.read(size)
        self._advance(len(chunk))
        return chunk

    # httpx sizes the body from these (a Content-Length lets the API refuse a file that is too
    # large before it is sent) and rewinds the file before sending it.
    def fileno(self) -> int:
        fileno: int = self._f.fileno()
        return fileno

    def seek(self, offset: int, whence: int = 0) -> int:
        position: int = self._f.seek(offset, whence)
        return position

    def tell(self) -> int:
        position: int = self._f.tell()
        return position


def run_dataset_upload(args: argparse.Namespace) -> int:
    """Upload a file with a progress bar; print the dataset's id and summary."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    path: Path = args.file
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    data = {
        k: v
        for k, v in (
            ("name", args.name),
            ("label_column", args.label_column),
            ("format", args.format),
        )
        if v
    }
    with _api(args, timeout=600.0) as api:
        limit = api.json("GET", "/api/v1/datasets", params={"limit": 1})["max_upload_bytes"]
        if size > limit:
            print(
                f"error: {path} is {size:,} bytes; the service accepts at most {limit:,} "
                "(HPSEARCH_MAX_UPLOAD_BYTES on the service)",
                file=sys.stderr,
            )
            return EXIT_INVALID
        with (
            path.open("rb") as f,
            Progress(
                TextColumn(f"uploading {path.name}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("upload", total=size)
            reader = _ProgressReader(f, lambda n: progress.advance(task, n))
            response = api.request(
                "POST",
                "/api/v1/datasets",
                files={"file": (path.name, reader)},
                data=data,
                expect=(200, 201),
                subject=f"the upload of {path}",
            )
    d = response.json()
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in d["shapes"].items())
    print(
        f"dataset {d['id']} ({d['name']}): {shapes}; {d['classes']} classes; "
        f"{d['size_bytes']:,} bytes; sha256 {d['sha256']}"
        + ("" if response.status_code == 201 else " (already uploaded)")
    )
    return 0


def run_dataset_list(args: argparse.Namespace) -> int:
    """A table of uploaded datasets."""
    with _api(args) as api:
        datasets, count = api.datasets()
    print_table(
        f"{count} datasets",
        ("id", "name", "format", "x_train", "classes", "bytes", "downloads", "created"),
        (
            (
                d["id"],
                d["name"],
                d["format"],
                "x".join(map(str, d["shapes"]["x_train"])),
                str(d["classes"]),
                f"{d['size_bytes']:,}",
                str(d["downloads"]),
                timestamp(d["created_at"]),
            )
            for d in datasets
        ),
        no_wrap=("id",),
    )
    return EXIT_OK


def run_dataset_action(args: argparse.Namespace) -> int:
    """show / delete."""
    with _api(args) as api:
        if args.action == "show":
            print(json.dumps(api.dataset(args.dataset_id), indent=2))
        else:
            api.delete_dataset(args.dataset_id)
            print(f"dataset {args.dataset_id} deleted")
    return EXIT_OK
