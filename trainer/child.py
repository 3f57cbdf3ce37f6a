"""The child process that trains trials for a ``TrialExecutor``.

It speaks JSON messages over a pipe (never pickled objects):

parent -> child: ``{"type": "warm", "dataset": {...}}``, ``{"type": "trial", "params": {...},
"dataset": {...}, "settings": {...}}``, ``{"type": "answer", "stop": bool}`` (to an epoch),
``{"type": "exit"}``.
child -> parent: ``{"type": "ready", "pid": int}``, ``{"type": "epoch", "epoch": int,
"metrics": {...}}``, ``{"type": "result", "result": {...}, "rss": int}``,
``{"type": "invalid", "errors": [...], "rss": int}``.

Its parent decides when it stops: it ignores SIGINT and SIGTERM (a Ctrl-C, or a SIGTERM sent to
the worker's whole process group, must not cut a trial short that the worker means to finish),
and it exits quietly, status 0 and no traceback, as soon as its parent is gone: told to exit
(even mid-trial), its pipe closed, or its parent process dead (checked twice a second, so that
a trial in a long epoch notices too). An error in one trial is that trial's ``failed`` result;
the process goes on to the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import psutil

# How often the child checks that its parent is still alive.
_PARENT_CHECK_SECONDS = 0.5


def send(conn: Connection, message: dict[str, Any]) -> None:
    """Send one JSON message."""
    conn.send_bytes(json.dumps(message).encode())


def receive(conn: Connection) -> dict[str, Any]:
    """Receive one JSON message (``EOFError`` when the other side is gone)."""
    message: dict[str, Any] = json.loads(conn.recv_bytes())
    return message


def _parent_gone() -> NoReturn:
    """Nothing is left to report to: exit now, quietly (no cleanup worth a traceback)."""
    os._exit(0)


class _PipeReporter:
    """Forwards each epoch to the parent and waits for its answer: stop (pruned) or go on."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        try:
            send(self._conn, {"type": "epoch", "epoch": epoch, "metrics": dict(metrics)})
            answer = receive(self._conn)
        except (EOFError, OSError):
            _parent_gone()
        if answer.get("type") != "answer":  # "exit": the parent stops this trial
            _parent_gone()
        return bool(answer["stop"])


def serve(conn: Connection, intra_op_threads: int | None, inter_op_threads: int | None) -> None:
    """Serve trials until told to exit or until the parent goes away."""
    from trainer.training import configure_threads

    configure_threads(intra_op_threads, inter_op_threads)
    import keras  # noqa: F401  (imported now, so that no trial pays for it)

    from hpsearch.datasets import DatasetSpec
    from trainer.data import load_dataset

    me = psutil.Process()
    try:
        send(conn, {"type": "ready", "pid": os.getpid()})
    except OSError:
        return
    while True:
        try:
            message = receive(conn)
        except (EOFError, OSError):
            return
        if message["type"] == "exit":
            return
        if message["type"] == "warm":
            with contextlib.suppress(Exception):  # the trial that needs it reports the error
                load_dataset(DatasetSpec.model_validate(message["dataset"]))
            continue
        reply = _run_one(message, conn)
        try:
            send(conn, {**reply, "rss": me.memory_info().rss})
        except OSError:
            return


def _run_one(message: dict[str, Any], conn: Connection) -> dict[str, Any]:
    """One trial: its ``result`` message, or ``invalid`` when its spec is rejected."""
    from hpsearch.datasets import DatasetSpec
    from hpsearch.errors import InvalidSpecError
    from hpsearch.params import TrainingSettings, validate_params
    from hpsearch.results import TrialResult, TrialState
    from trainer.data import load_dataset
    from trainer.training import run_trial

    settings = TrainingSettings()
    try:
        settings = TrainingSettings.model_validate(message["settings"])
        limit = settings.timeout_seconds
        if limit is not None and limit >= threading.TIMEOUT_MAX / 2:
            # Longer than a timer can wait (about 292 years): in effect, no limit.
            settings = settings.model_copy(update={"timeout_seconds": None})
        dataset = load_dataset(DatasetSpec.model_validate(message["dataset"]))
        params = validate_params(message["params"])
        result = run_trial(params, dataset, settings, _PipeReporter(conn))
    except InvalidSpecError as exc:
        return {"type": "invalid", "errors": exc.to_json()}
    except Exception as exc:  # the trial fails with the reason; the process serves the next
        result = TrialResult(
            state=TrialState.FAILED,
            reason=f"failed before training: {type(exc).__name__}: {exc}",
            objective=settings.objective,
            direction=settings.direction,
        )
    return {"type": "result", "result": result.model_dump(mode="json")}


def _exit_with_parent() -> None:
    """Exit (quietly) once the parent process is gone, even in the middle of an epoch."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_SECONDS)
            if os.getppid() != parent:
                _parent_gone()

    threading.Thread(target=watch, daemon=True, name="hpsearch-parent-watch").start()


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.child FD INTRA INTER``: serve over the inherited socket ``FD``."""
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_parent()
    fd, intra, inter = (int(a) for a in (argv if argv is not None else sys.argv[1:]))
    serve(Connection(fd), intra or None, inter or None)


if __name__ == "__main__":
    main()
