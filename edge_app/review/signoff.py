"""Sign-off of a count's result, re-opening it for an amendment, and what the report says of both.

Signing recomputes the result from the cells as the reviewer left them (with
``edge_app.counting.tally``), adds who signed, when, the version and, for an
amendment, why the result was re-opened, and hands it to
``edge_app.store.review.store_signoff``, which freezes it and queues the
amendment for every destination. Payload keys added: ``version``,
``signed_by``, ``signed_at``, ``amended``, ``amendment_reason``,
``verified_cells`` and ``not_leukocyte``, and ``signed_incomplete`` when the reviewer
signed a count that ended early (``results.state`` 'incomplete') knowing so; a
'no-result' count (no cell) has nothing to sign.
"""

from __future__ import annotations

import logging
from typing import Optional

from edge_app.store import review as store_review
from edge_app.store.db import Store, utcnow
from edge_app.store.review import ReviewError

logger = logging.getLogger(__name__)

# The payload fields a sign-off recomputes from the cells; everything else is kept as counted.
_RECOMPUTED = ("total", "counts", "percent", "ci95", "other", "absolute", "flagged", "corrections")


class AlreadySigned(ReviewError):
    """The result is signed already and nothing was re-opened."""


def result_state(store: Store, session_id: str) -> tuple[str, Optional[str]]:
    """(state, reason) of the session's result: 'final', 'incomplete' or 'no-result'."""
    row = store.conn.execute("SELECT * FROM results WHERE session_id=?", (session_id,)).fetchone()
    if row is None:
        return "final", None
    keys = row.keys()
    return (row["state"] if "state" in keys else "final") or "final", row["reason"] if "reason" in keys else None


def signed_payload(store: Store, session_id: str, user: str, version: int, reason: Optional[str],
                   now: Optional[str] = None, incomplete_ok: bool = False) -> dict:
    from edge_app.review.model import tally_for

    row = dict(store.session(session_id))
    base = store.result(session_id)
    if base is None:
        raise ReviewError(f"session {session_id[:8]} has no result yet (status '{row['status']}'): "
                          "finish the count before signing it")
    state, why = result_state(store, session_id)
    if state == "no-result":
        raise ReviewError(f"session {session_id[:8]} has no result to sign ({why or 'no cell counted'}): "
                          "count the sample again")
    if state == "incomplete" and not incomplete_ok:
        raise ReviewError(f"session {session_id[:8]} is an INCOMPLETE count ({why or 'the source ended early'}): "
                          "sign it only knowing so (--incomplete; on the review page, tick the box)")
    tally = tally_for(store, session_id, base, row)
    reviews = store_review.reviews(store, session_id)
    # Kiosk corrections are in the corrections table already; add the reviewers' changes.
    tally.corrections += sum(1 for r in reviews if r["source"] != "kiosk" and r["from_label"] != r["to_label"])
    fresh = tally.payload(session_id=session_id, meta=base, frames=base.get("frames") or 0,
                          fps=base.get("fps") or 0.0, finalised_at=base.get("finalised_at"))
    payload = dict(base)
    payload.update({k: fresh[k] for k in _RECOMPUTED})
    payload.update({
        "version": version, "signed_by": user, "signed_at": now or utcnow(), "amended": version > 1,
        "amendment_reason": reason if version > 1 else None,
        "verified_cells": len(store_review.reviewed_cell_ids(store, session_id)),
        "signed_incomplete": state == "incomplete",
        "not_leukocyte": store.conn.execute("SELECT COUNT(*) FROM cells WHERE session_id=? AND deleted=0 AND "
                                            "label='x'", (session_id,)).fetchone()[0],
    })
    return payload


def sign(store: Store, session_id: str, user: str, reason: Optional[str] = None,
         incomplete_ok: bool = False) -> dict:
    """Sign the open version of a session's result; returns the signed payload.

    For an amendment (version > 1) ``reason`` defaults to the re-open's reason.
    Raises ``AlreadySigned`` when the result is signed and was not re-opened.
    """
    sid = store.session(session_id)["id"]
    user = (user or "").strip()
    if not user:
        raise ReviewError("sign-off needs a named user (--user NAME)")
    st = store_review.state(store, sid)
    if st.signed:
        raise AlreadySigned(f"session {sid[:8]} is signed already (version {st.version}, by {st.signed_by} at "
                            f"{st.signed_at[:19]}); to amend it, re-open it with a reason")
    why = (reason or "").strip() or st.reason
    payload = signed_payload(store, sid, user, st.version, why, incomplete_ok=incomplete_ok)
    store_review.store_signoff(store, sid, st.version, user, payload, why)
    return payload


def reopen(store: Store, session_id: str, user: str, reason: str) -> int:
    """Re-open a signed result for an amendment; returns the new version number."""
    return store_review.reopen(store, store.session(session_id)["id"], user, reason)


def amend(store: Store, session_id: str, user: str, reason: str, changes: dict[int, str],
          source: str = "review") -> dict:
    """Re-open, apply ``{cell_id: label}`` and sign again, in that order; returns the new payload."""
    sid = store.session(session_id)["id"]
    reopen(store, sid, user, reason)
    for cell_id, label in changes.items():
        store_review.set_label(store, sid, cell_id, label, user, source)
    return sign(store, sid, user, reason)


def describe(store: Store, session_id: str) -> list[str]:
    """Lines for ``wbc-counter report``: who signed which version, and each amendment."""
    sid = store.session(session_id)["id"]
    rows = store_review.versions(store, sid)
    if not rows:
        return ["sign-off: not signed (review it with 'wbc-counter serve' or sign with "
                "'wbc-counter sign SESSION --user NAME')"]
    changes: dict[int, int] = {}
    for r in store_review.reviews(store, sid):
        if r["source"] != "kiosk" and r["from_label"] != r["to_label"]:
            changes[r["version"]] = changes.get(r["version"], 0) + 1
    out = []
    for v in rows:
        n = changes.get(v["version"], 0)
        what = f"{n} cell{'s' if n != 1 else ''} changed"
        if v["version"] == 1:
            head = "sign-off: version 1"
        else:
            head = (f"amendment: version {v['version']} re-opened by {v['opened_by']} at {v['opened_at'][:19]} "
                    f"(reason: {v['reason']})")
        if v["signed_at"]:
            out.append(f"{head}, {what}, signed by {v['signed_by']} at {v['signed_at'][:19]}")
        else:
            out.append(f"{head}, {what}, not signed yet (the result sent is version {v['version'] - 1})")
    return out
