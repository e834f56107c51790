"""`.venv/bin/python -m bench ...` from the repository root; exit 1 if the benchmark itself broke."""

from __future__ import annotations

import sys

from .basics import BenchError
from .cli import main

try:
    sys.exit(main(sys.argv[1:]))
except BenchError as exc:
    print(f"bench failed: {exc}", file=sys.stderr)
    sys.exit(1)
