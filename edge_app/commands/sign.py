"""``wbc-counter sign SESSION --user NAME [--reason TEXT]``: scripted sign-off of a count's result.

Signs the version open for review: the first one, or an amendment re-opened on
the review page (``--reason`` then says why; default: the re-open's reason).
The result is recomputed from the cells as reviewed, frozen, and from then on
sent by ``sync`` / ``lis send``. Prints one JSON line: ``{"session", "version",
"signed_by", "signed_at", "amended"}``. A result already signed is left as it
is (exit 0, said on stderr); one without a result yet is an error (exit 2).
"""

from __future__ import annotations

import json
import logging
import sys

from edge_app import paths
from edge_app.store import Store

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("sign", help="sign off a count's result (who verified it), so it can be sent")
    p.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")
    p.add_argument("--user", required=True, metavar="NAME", help="who signs (goes into the result and audit)")
    p.add_argument("--reason", default=None, metavar="TEXT", help="why, for an amendment of a signed result")
    p.add_argument("--incomplete", action="store_true",
                   help="sign a count that ended early (INCOMPLETE), knowing so; it is then sent as such")
    return p


def main(args) -> int:
    from edge_app.review.signoff import AlreadySigned, sign
    from edge_app.store.review import ReviewError

    db = paths.db_path(args.data_dir)
    if not db.is_file():
        print(f"wbc-counter sign: error: no database at {db} (pass the --data-dir used by 'run')", file=sys.stderr)
        return 2
    with Store(args.data_dir) as store:
        try:
            payload = sign(store, args.session, args.user, args.reason, incomplete_ok=args.incomplete)
        except AlreadySigned as exc:
            print(f"wbc-counter sign: {exc}", file=sys.stderr)
            return 0
        except ReviewError as exc:
            print(f"wbc-counter sign: error: {exc}", file=sys.stderr)
            return 2
    print(json.dumps({k: payload[k] for k in ("session", "version", "signed_by", "signed_at", "amended")}))
    return 0
