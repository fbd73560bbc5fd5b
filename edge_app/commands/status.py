"""`wbc-counter status` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("status", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter status: not built yet", file=sys.stderr)
    return 2
