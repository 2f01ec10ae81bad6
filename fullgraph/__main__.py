"""`python -m fullgraph`: the `fullgraph` command, for where only the interpreter is on PATH."""

import sys

from fullgraph.checks.cli import main

if __name__ == "__main__":
    sys.exit(main())
