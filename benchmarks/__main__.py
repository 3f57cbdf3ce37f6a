"""``python -m benchmarks [--quick] [NAME ...]``: the benchmark suite, one table per benchmark.

Each benchmark runs in a process of its own, in the order of issue 6's list, then the
dashboard's. ``--quick`` runs every benchmark at a tiny size: it checks that they still run
end to end (CI runs it) and never that a timing holds. Exits non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# name -> extra arguments of the full run
BENCHMARKS: dict[str, list[str]] = {
    "overhead": [],
    "search_quality": [],
    "scaling": [],
    "coordination": [],
    "large_study": [],
    "worker_memory": ["--no-recycle"],
    "dashboard_load": [],
    "crowd": [],
    "upload_memory": [],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: do they still run?")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or BENCHMARKS:
        command = [sys.executable, "-m", f"benchmarks.{name}"]
        command += ["--quick"] if args.quick else BENCHMARKS[name]
        started = time.monotonic()
        print(f"[bench] {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        # TensorFlow's C++ start-up lines would interleave with the tables.
        code = subprocess.call(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        took = time.monotonic() - started
        print(f"[bench] {name}: exit {code} after {took:.0f} s", file=sys.stderr, flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
