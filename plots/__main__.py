"""``python -m plots FIGURE RECORDS... -o FILE.pdf``: see :mod:`plots.cli` (``python -m plots --help``)."""
from plots.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
