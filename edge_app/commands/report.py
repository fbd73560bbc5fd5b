"""``wbc-counter report SESSION [--out DIR]``: print the result, write a PNG + HTML page.

SESSION is a session id or a unique prefix of one (as shown on screen).
Default output folder: ``<data-dir>/reports``.
"""

from __future__ import annotations

import logging
import sys

from edge_app import fsutil, paths
from edge_app.store import Store
from edge_app.textsafe import for_terminal

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("report", help="print a session's result and write a one-page PNG/HTML report")
    p.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default <data-dir>/reports)")
    return p


def main(args) -> int:
    from edge_app.config import load_config
    from edge_app.review.signoff import describe
    from edge_app.session.report import write_report

    cfg = load_config(args.config)  # a bad config is said (by cli) before anything is written

    db = paths.db_path(args.data_dir)
    if not db.is_file():
        print(f"wbc-counter report: error: no database at {db} (pass the --data-dir used by 'run')", file=sys.stderr)
        return 2
    out_dir = args.out or paths.reports_dir(args.data_dir)
    with Store(args.data_dir) as store:
        try:
            if not args.out:  # the default folder is the data dir's: a link must not lead the write elsewhere
                fsutil.ensure_inside(args.data_dir, out_dir, "the reports folder")
            signoff = describe(store, args.session)  # who signed which version, and each amendment
            text, png, page = write_report(store, args.session, out_dir, cfg.tally.ci_method, signoff)
        except OSError as exc:
            why = fsutil.disk_full_message(out_dir) if fsutil.is_disk_full(exc) else exc
            print(f"wbc-counter report: error: cannot write the report to {out_dir}: {why}", file=sys.stderr)
            return 2
    print(for_terminal(text))  # sample ids and names are stored as typed: no escape sequence reaches the terminal
    for line in signoff:
        print(for_terminal(line))
    print(f"report: {png}")
    print(f"report: {page}")
    return 0
