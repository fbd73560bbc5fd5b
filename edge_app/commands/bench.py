"""`wbc-counter bench` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("bench", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter bench: not built yet", file=sys.stderr)
    return 2
