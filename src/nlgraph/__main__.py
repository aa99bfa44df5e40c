"""``python -m nlgraph demo|bench|info``: see :mod:`nlgraph.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
