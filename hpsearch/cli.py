"""The ``hpsearch`` command. Each half registers its own subcommands; a half that is not
installed (the API image has no trainer, a worker image no service) is simply absent.

This launcher is the one module besides the tests that knows both halves; it imports neither
beyond their ``cli`` modules, which defer heavy imports (TensorFlow, FastAPI) to the command run.
The ``study`` and ``dataset`` commands are the client's (``hpsearch.commands``): always there.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from hpsearch import commands

# Each half: the package that tells it is installed (a wheel carries every package, but only the
# half's extra brings its frameworks), and its commands.
_HALVES = {
    "trainer": ("tensorflow", "trial, worker"),
    "service": ("sqlalchemy", "serve, migrate, token, dashboard"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with the subcommands of every installed half."""
    parser = argparse.ArgumentParser(
        prog="hpsearch", description="Self-hosted hyperparameter search for Keras models."
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.register(subparsers)  # study, dataset: the client's, always there
    missing = []
    for half, (framework, names) in _HALVES.items():
        if importlib.util.find_spec(framework) is None:
            missing.append(f"{names} (pip install 'hpsearch[{half}]')")
            continue
        importlib.import_module(f"{half}.cli").register(subparsers)
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
