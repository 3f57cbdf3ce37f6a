"""The child process that trains trials for a ``TrialExecutor``.

It speaks JSON messages over a pipe (never pickled objects):

parent -> child: ``{"type": "warm", "dataset": {...}}``, ``{"type": "trial", "params": {...},
"dataset": {...}, "settings": {...}}``, ``{"type": "answer", "stop": bool}`` (to an epoch),
``{"type": "exit"}``.
child -> parent: ``{"type": "ready", "pid": int}``, ``{"type": "epoch", "epoch": int,
"metrics": {...}}``, ``{"type": "result", "result": {...}, "rss": int}``,
``{"type": "invalid", "errors": [...], "rss": int}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import psutil


def send(conn: Connection, message: dict[str, Any]) -> None:
    """Send one JSON message."""
    conn.send_bytes(json.dumps(message).encode())


def receive(conn: Connection) -> dict[str, Any]:
    """Receive one JSON message (``EOFError`` when the other side is gone)."""
    message: dict[str, Any] = json.loads(conn.recv_bytes())
    return message


class _PipeReporter:
    """Forwards each epoch to the parent and waits for its answer: stop (pruned) or go on."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        send(self._conn, {"type": "epoch", "epoch": epoch, "metrics": dict(metrics)})
        return bool(receive(self._conn)["stop"])


def serve(conn: Connection, intra_op_threads: int | None, inter_op_threads: int | None) -> None:
    """Serve trials until told to exit or until the parent goes away."""
    from trainer.training import configure_threads

    configure_threads(intra_op_threads, inter_op_threads)
    import keras  # noqa: F401  (imported now, so that no trial pays for it)

    from hpsearch.datasets import DatasetSpec
    from hpsearch.errors import InvalidSpecError
    from hpsearch.params import TrainingSettings, validate_params
    from trainer.data import load_dataset
    from trainer.training import run_trial

    me = psutil.Process()
    send(conn, {"type": "ready", "pid": os.getpid()})
    while True:
        try:
            message = receive(conn)
        except (EOFError, OSError):
            return
        if message["type"] == "exit":
            return
        try:
            dataset = load_dataset(DatasetSpec.model_validate(message["dataset"]))
            if message["type"] == "warm":
                continue
            params = validate_params(message["params"])
            settings = TrainingSettings.model_validate(message["settings"])
            result = run_trial(params, dataset, settings, _PipeReporter(conn))
        except InvalidSpecError as exc:
            if message["type"] == "trial":
                send(
                    conn, {"type": "invalid", "errors": exc.to_json(), "rss": me.memory_info().rss}
                )
            continue
        send(
            conn,
            {
                "type": "result",
                "result": result.model_dump(mode="json"),
                "rss": me.memory_info().rss,
            },
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.child FD INTRA INTER``: serve over the inherited socket ``FD``."""
    import sys

    fd, intra, inter = (int(a) for a in (argv if argv is not None else sys.argv[1:]))
    serve(Connection(fd), intra or None, inter or None)


if __name__ == "__main__":
    main()
