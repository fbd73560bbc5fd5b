"""``wbc-counter review SESSION [--user NAME]``: review and sign a count on the kiosk screen.

Opens the gallery review in the kiosk's window (``[display] output``; needs a
screen). The user named in the audit trail is ``--user``, else ``[kiosk]
operator``. The web page (``wbc-counter serve``) offers the same review, plus
amendments of signed results.
"""

from __future__ import annotations

import logging
import sys

from edge_app import paths
from edge_app.config import load_config
from edge_app.store import Store

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("review", help="review and sign a count's cells on the kiosk screen")
    p.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")
    p.add_argument("--user", default=None, metavar="NAME", help="who reviews (default: [kiosk] operator)")
    return p


def main(args) -> int:
    from edge_app.display.sinks import DisplayError, HeadlessSink, open_display
    from edge_app.review.kiosk import KioskReview

    cfg = load_config(args.config)
    db = paths.db_path(args.data_dir)
    if not db.is_file():
        print(f"wbc-counter review: error: no database at {db} (pass the --data-dir used by 'run')", file=sys.stderr)
        return 2
    with Store(args.data_dir) as store:
        review = KioskReview(store, args.session, (args.user or cfg.kiosk.operator).strip())
        if review.model.result is None:
            print(f"wbc-counter review: error: session {review.sid[:8]} has no result yet: finish the count first",
                  file=sys.stderr)
            return 2
        try:
            sink = open_display(cfg.display.output, (cfg.display.width, cfg.display.height))
        except DisplayError as exc:
            print(f"wbc-counter review: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(sink, HeadlessSink):
            print("wbc-counter review: error: no screen to show the review on (DISPLAY unset or [display] output "
                  "= headless): use the review page instead, 'wbc-counter serve'", file=sys.stderr)
            return 2
        try:
            review.run(sink)
        finally:
            sink.close()
        st = review.model.state
    print(f"session {review.sid}: " + (f"signed by {st.signed_by} (version {st.version})" if st.signed
                                       else f"not signed (version {st.version})"))
    return 0
