"""`wbc-counter lis` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("lis", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter lis: not built yet", file=sys.stderr)
    return 2
