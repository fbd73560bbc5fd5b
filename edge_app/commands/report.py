"""`wbc-counter report` (being built; see the issue tracker)."""

import sys


def add_parser(sub):
    return sub.add_parser("report", help="(not built yet)")


def main(args) -> int:
    print("wbc-counter report: not built yet", file=sys.stderr)
    return 2
