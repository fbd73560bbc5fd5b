"""HL7 v2.5.1 ORU^R01 for one finalised differential.

MSH, ORC (RE), OBR (LOINC panel, filler order number = result id), an NTE with
the totals, one OBX per class (NM, LOINC code, UCUM ``%``, responsible
observer = operator, equipment = device) each followed by an NTE with the
count and 95% CI, and an SPM whose specimen id is the sample id. Original
acknowledgement mode (MSH-15/16 empty): the LIS answers MSA AA, AE or AR.
MSH-10 is derived from the result id (and the result version for an
amendment), so a re-sent message has the same control id and a LIS that
de-duplicates can do so, while an amendment is a new message.

Result status (OBX-11, OBR-25): ``F`` for a signed result, ``C`` for a signed
amendment (a correction of a result sent before), ``P`` for one nobody signed
(sent only when ``[delivery] require_signoff`` is off). The signer is named in
the first NTE.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Optional

from edge_app import __version__
from edge_app.labels import FIVE_PART
from edge_app.lis.text import one_line, parse_time
from edge_app.sync.loinc import PANEL_CODE, PERCENT_CODES, SHORT_NAMES
from edge_app.sync.payload import ResultPayload

logger = logging.getLogger(__name__)

SEGMENT_END = "\r"
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(value: object) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in one_line(value))


def hl7_ts(t: _dt.datetime) -> str:
    """DTM with seconds and zone, e.g. 20240501120000+0000."""
    return t.strftime("%Y%m%d%H%M%S%z")


def control_id(result_id: str, version: int = 1) -> str:
    # MSH-10 is ST(20) in v2.5.1; an amendment gets its own id, or a de-duplicating LIS drops it.
    return result_id[:20] if version <= 1 else f"{result_id[:15]}-v{version}"[:20]


def result_status(result: ResultPayload) -> str:
    return "C" if result.amended else "F" if result.signed else "P"


def _seg(*fields: str) -> str:
    f = list(fields)
    while len(f) > 1 and f[-1] == "":
        f.pop()
    return "|".join(f)


def build_oru(result: ResultPayload, *, sending_facility: Optional[str] = None, receiving_app: str = "LIS",
              receiving_facility: str = "LAB", now: Optional[_dt.datetime] = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    when = hl7_ts(parse_time(result.finalised_at))
    rid = escape(result.result_id)
    device = escape(result.device or "")
    operator = escape(result.operator or "")
    status = result_status(result)
    segs = [
        _seg("MSH", "^~\\&", "WBC-COUNTER", escape(sending_facility or result.device or ""), escape(receiving_app),
             escape(receiving_facility), hl7_ts(now), "", "ORU^R01^ORU_R01",
             control_id(result.result_id, result.version), "P", "2.5.1", "", "", "", "", "", "UNICODE UTF-8"),
        _seg("ORC", "RE", "", f"{rid}^WBC-COUNTER", "", "CM"),
        _seg("OBR", "1", "", f"{rid}^WBC-COUNTER", f"{PANEL_CODE[0]}^{escape(PANEL_CODE[1])}^LN", "", "", when,
             "", "", "", "", "", "", "", "", "", "", "", "", "", "", when, "", "HM", status),
        _seg("NTE", "1", "L", escape(f"{result.total} leukocytes classified (target {result.target}); "
                                     f"{result.other} other cells; {result.flagged} flagged for review; "
                                     f"{result.corrections} corrected; wbc-counter {__version__}"
                                     + (f", model {result.model_version}" if result.model_version else "")
                                     + _signoff_text(result))),
    ]
    for seq, cls_name in enumerate(FIVE_PART, start=1):
        code, name = PERCENT_CODES[cls_name]
        segs.append(_seg(
            "OBX", str(seq), "NM", f"{code}^{escape(name)}^LN^{SHORT_NAMES[cls_name]}^^L", "",
            f"{result.percent[cls_name]:.1f}", "%^percent^UCUM", "", "", "", "", status, "", "", when, "",
            operator, "", device, when))
        segs.append(_seg("NTE", "1", "L", escape(result.ci_text(cls_name))))
    segs.append(_seg("SPM", "1", f"{escape(result.sample_id or '')}&WBC-COUNTER^{rid}&WBC-COUNTER", "",
                     "BLD^Whole blood^HL70487"))
    return SEGMENT_END.join(segs) + SEGMENT_END


def _signoff_text(result: ResultPayload) -> str:
    if not result.signed:
        return "; not signed off (preliminary)"
    text = f"; verified and signed by {result.signed_by} at {result.signed_at}, result version {result.version}"
    if result.amended and result.amendment_reason:
        text += f"; corrected: {result.amendment_reason}"
    return text
