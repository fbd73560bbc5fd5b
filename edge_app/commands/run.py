"""`wbc-counter run` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("run", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter run: not built yet", file=sys.stderr)
    return 2
