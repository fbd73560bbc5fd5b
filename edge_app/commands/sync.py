"""`wbc-counter sync` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("sync", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter sync: not built yet", file=sys.stderr)
    return 2
