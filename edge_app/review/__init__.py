"""Review and sign-off of one count: every cell in a gallery by class, then a named sign-off.

``model`` builds the gallery and the live differential (with ``edge_app.counting.tally``),
``signoff`` signs, re-opens and describes versions, ``web`` serves the review page
(``wbc-counter serve``) and ``kiosk`` shows it on the kiosk screen (``wbc-counter review``).
The rules (audit trail, frozen signed versions) live in ``edge_app.store.review``.
"""

from edge_app.review.model import ReviewModel
from edge_app.review.signoff import AlreadySigned, reopen, sign

__all__ = ["AlreadySigned", "ReviewModel", "reopen", "sign"]
