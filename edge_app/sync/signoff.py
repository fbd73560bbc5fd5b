"""The sign-off rule of delivery: with ``[delivery] require_signoff`` only signed results go out.

A result is signed once a named person signed it off (``edge_app.review``); its
payload then names the signer. Unsigned results stay in the outbox, untouched
(no attempt counted), and are delivered by the first sync after the sign-off.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

SIGN_HINT = ("review and sign them at the review page ('wbc-counter serve') or on the kiosk "
             "('wbc-counter review SESSION'), or run 'wbc-counter sign SESSION --user NAME'")


def is_signed(payload: dict) -> bool:
    return bool(payload.get("signed_by"))


def awaiting_signoff(entry) -> bool:
    """The ``SyncWorker`` hold rule: True for an entry whose result nobody signed."""
    return not is_signed(entry.payload)
