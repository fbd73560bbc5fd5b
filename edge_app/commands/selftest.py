"""`wbc-counter selftest` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("selftest", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter selftest: not built yet", file=sys.stderr)
    return 2
