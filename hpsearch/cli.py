"""The ``hpsearch`` command. Each half registers its own subcommands; a half that is not
installed (the API image has no trainer, a worker image no service) is simply absent.

This launcher is the one module besides the tests that knows both halves; it imports neither
beyond their ``cli`` modules, which defer heavy imports (TensorFlow, FastAPI) to the command run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_HALVES = {
    "trainer": "trial, worker",
    "service": "serve, migrate, study, dataset, dashboard",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with the subcommands of every installed half."""
    parser = argparse.ArgumentParser(
        prog="hpsearch", description="Self-hosted hyperparameter search for Keras models."
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    missing = []
    for half, commands in _HALVES.items():
        try:
            module = importlib.import_module(f"{half}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != half:  # a broken install, not an absent half: say so
                raise
            missing.append(f"{commands} (pip install 'hpsearch[{half}]')")
            continue
        module.register(subparsers)
    if missing:
        parser.epilog = "Not installed here: " + "; ".join(missing)
    return parser


def _version() -> str:
    from hpsearch import __version__

    return f"hpsearch {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
