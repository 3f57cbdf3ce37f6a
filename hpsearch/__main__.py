"""``python -m hpsearch``: the same as the ``hpsearch`` command."""

import sys

from hpsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
