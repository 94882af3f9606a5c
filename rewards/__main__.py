"""Command line of the rewards package: ``python -m rlreason.rewards check ...``.

``check`` is the preflight check (:mod:`.preflight`): it scores a dataset's reference
solutions against its gold answers and exits non-zero when too many rows are bad.
"""

from __future__ import annotations

import argparse
import sys

from . import preflight


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; the return value is the exit code."""
    parser = argparse.ArgumentParser(prog="python -m rlreason.rewards", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="score a dataset's reference solutions against its golds before training",
        description=preflight.__doc__.split("\n")[0],
    )
    preflight.add_arguments(check)
    args = parser.parse_args(argv)
    return preflight.run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
