"""``python -m asynclock``: the command line (see ``asynclock/_cli.py``)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
