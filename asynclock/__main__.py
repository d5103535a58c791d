"""``python -m asynclock``: the command line.

Commands:

- ``demo``: worker processes contending for locks on a private server (or ``--url``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    print(f"unknown command {command!r}; try: python -m asynclock demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
