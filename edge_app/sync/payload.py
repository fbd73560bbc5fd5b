"""The finalised result payload, checked once for every outgoing message.

The app writes the payload (see ``Store.finalise_session``); the FHIR, HL7 and
ASTM builders read it through ``ResultPayload`` so a missing or malformed
field is one clear, permanent error instead of a KeyError deep in a builder.
Error messages name fields, never their values (they may be sample ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from edge_app.labels import FIVE_PART
from edge_app.sync.errors import PermanentError

logger = logging.getLogger(__name__)


def refuse_unsendable(result_id: str, payload: dict) -> None:
    """PermanentError for a result that is not a complete count (``results.state``, migration 0003):
    'no-result' (no cell counted) is never sent; 'incomplete' (the source ended before its declared
    end) only once a person signed it knowing it is incomplete (``signed_by`` and
    ``signed_incomplete`` in the payload). Payloads from before the state existed are complete."""
    state = payload.get("state") or ("final" if payload.get("complete", True) else "incomplete")
    if state == "final":
        return
    why = payload.get("reason") or "no reason recorded"
    if state == "no-result":
        raise PermanentError(f"result {result_id[:12]} is NO RESULT ({why}) and is never sent: "
                             "count the sample again")
    if not (payload.get("signed_by") and payload.get("signed_incomplete")):
        raise PermanentError(f"result {result_id[:12]} is INCOMPLETE ({why}) and is not sent unless a person "
                             "signs it knowing so: count the sample again")


def site_text(payload: dict) -> Optional[str]:
    """The site profile of a payload's device calibration as one text ("NAME (sha256 0123456789ab)"), or None."""
    cal = payload.get("device_calibration")
    if not isinstance(cal, dict) or not cal.get("site_profile"):
        return None
    sha = str(cal.get("site_profile_sha256") or "")[:12]
    return f"{cal['site_profile']} (sha256 {sha})" if sha else str(cal["site_profile"])


@dataclass(frozen=True)
class ResultPayload:
    result_id: str
    session: str
    sample_id: Optional[str]
    operator: Optional[str]
    device: Optional[str]
    model_version: Optional[str]
    backend: Optional[str]
    total: int
    counts: Dict[str, int]
    percent: Dict[str, float]
    ci95: Dict[str, Tuple[float, float]]
    ci_method: str
    other: int
    frames: int
    target: int
    flagged: int
    corrections: int
    finalised_at: str
    # The site profile the count was made with ("NAME (sha256 ...)"), None = the network alone.
    site_profile: Optional[str] = None
    # Sign-off (edge_app.review.signoff): None / 1 / False for a result nobody signed.
    signed_by: Optional[str] = None
    signed_at: Optional[str] = None
    version: int = 1
    amendment_reason: Optional[str] = None

    @property
    def signed(self) -> bool:
        return self.signed_by is not None

    @property
    def amended(self) -> bool:
        """A signed result changed after an earlier version was signed (and maybe sent)."""
        return self.signed and self.version > 1

    @classmethod
    def parse(cls, result_id: str, payload: dict) -> "ResultPayload":
        def need(key):
            if key not in payload:
                raise PermanentError(f"result {result_id[:12]}: payload has no '{key}' field")
            return payload[key]

        def text(key):
            v = payload.get(key)
            return None if v in (None, "") else str(v)

        if payload.get("not_reported"):
            raise PermanentError(f"result {result_id[:12]} was counted while the self-test had not passed "
                                 "and is never reported: run 'wbc-counter selftest', then count the sample again")
        refuse_unsendable(result_id, payload)
        try:
            counts = {c: int(need("counts")[c]) for c in FIVE_PART}
            percent = {c: float(need("percent")[c]) for c in FIVE_PART}
            ci95 = {c: (float(need("ci95")[c][0]), float(need("ci95")[c][1])) for c in FIVE_PART}
            total = int(need("total"))
            finalised_at = str(need("finalised_at"))
        except PermanentError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PermanentError(f"result {result_id[:12]}: counts/percent/ci95 malformed "
                                 f"({type(exc).__name__} on {exc!s:.40})") from None
        if total < 0 or sum(counts.values()) != total:
            raise PermanentError(f"result {result_id[:12]}: 'total' does not equal the sum of the five counts")
        for c in FIVE_PART:
            lo, hi = ci95[c]
            # 0.05: the app may round percent and bounds to different decimals.
            if not (0.0 <= lo <= hi <= 100.0 and lo - 0.05 <= percent[c] <= hi + 0.05):
                raise PermanentError(f"result {result_id[:12]}: ci95 for {c} does not bracket its percent in 0..100")
        return cls(
            result_id=result_id, session=str(payload.get("session", "")), sample_id=text("sample_id"),
            operator=text("operator"), device=text("device"), model_version=text("model_version"),
            backend=text("backend"), total=total, counts=counts, percent=percent, ci95=ci95,
            ci_method=str(payload.get("ci_method") or "wilson"), other=int(payload.get("other") or 0),
            frames=int(payload.get("frames") or 0), target=int(payload.get("target") or 0),
            flagged=int(payload.get("flagged") or 0), corrections=int(payload.get("corrections") or 0),
            finalised_at=finalised_at,
            site_profile=site_text(payload), signed_by=text("signed_by"), signed_at=text("signed_at"),
            version=int(payload.get("version") or 1), amendment_reason=text("amendment_reason"))

    def ci_text(self, cls_name: str) -> str:
        """Human-readable count and interval, the same words in FHIR notes, HL7 NTE and ASTM C."""
        lo, hi = self.ci95[cls_name]
        return (f"{self.counts[cls_name]} of {self.total} cells; 95% CI {lo:.1f}-{hi:.1f} % "
                f"({self.ci_method.capitalize()})")
