"""ASTM E1394-97 / CLSI LIS2-A2 records for one finalised differential.

One message: H (header), P (patient, empty: the kiosk knows no patient),
O (order: specimen id = sample id, instrument specimen id = result id),
one C after the O with the totals, then per class an R (percent, LOINC code
in the universal test id) followed by a C with the count and 95% CI, and L.

Delimiters are the standard ``|`` field, ``\\`` repeat, ``^`` component and
``&`` escape; free text is escaped (``&F&``, ``&S&``, ``&R&``, ``&E&``) and
cannot carry control characters, which would break the E1381 framing.

Result status (R.9) and report type (O.26) per E1394: ``F`` final (signed),
``C`` correction of a result sent before (a signed amendment), ``P``
preliminary (unsigned; sent only when ``[delivery] require_signoff`` is off).
The header's message control id (H.3) carries the version of an amendment.
"""

from __future__ import annotations

import logging
from typing import List

from edge_app import __version__
from edge_app.labels import FIVE_PART
from edge_app.lis.text import one_line, parse_time
from edge_app.sync.loinc import PANEL_CODE, PERCENT_CODES, SHORT_NAMES
from edge_app.sync.payload import ResultPayload

logger = logging.getLogger(__name__)

FIELD, REPEAT, COMPONENT, ESCAPE = "|", "\\", "^", "&"
DELIMITERS = REPEAT + COMPONENT + ESCAPE


def escape(value: object) -> str:
    text = one_line(value)
    out = []
    for ch in text:
        if ch == ESCAPE:
            out.append("&E&")
        elif ch == FIELD:
            out.append("&F&")
        elif ch == COMPONENT:
            out.append("&S&")
        elif ch == REPEAT:
            out.append("&R&")
        else:
            out.append(ch)
    return "".join(out)


def _record(*fields: str) -> str:
    # Trailing empty fields may be dropped (E1394 7.1.4): shorter frames.
    fields_l = list(fields)
    while fields_l and fields_l[-1] == "":
        fields_l.pop()
    return FIELD.join(fields_l)


def _ts(text: str) -> str:
    # Local time of the kiosk, as LIS2-A2 date/times carry no zone.
    return parse_time(text).astimezone().strftime("%Y%m%d%H%M%S")


def build_records(result: ResultPayload, now_iso: str) -> List[str]:
    """The records, without terminators; ``astm_e1381`` frames them."""
    when = _ts(result.finalised_at)
    status = "C" if result.amended else "F" if result.signed else "P"
    control = result.result_id if result.version <= 1 else f"{result.result_id}-v{result.version}"
    sender = COMPONENT.join(["wbc-counter", escape(__version__), escape(result.device or "")])
    records = [
        # H.2 is the delimiter definition itself and must not be escaped.
        _record("H", DELIMITERS, escape(control), "", sender, "", "", "", "", "", "", "P", "LIS2-A2",
                _ts(now_iso)),
        _record("P", "1"),
        _record("O", "1", escape(result.sample_id or ""), escape(result.result_id),
                COMPONENT * 3 + PANEL_CODE[0] + COMPONENT + escape(PANEL_CODE[1]), "R", "", "",
                "", "", "", "", "", "", "", "Blood", "", "", "", "", "", "", when, "", "", status),
        _record("C", "1", "I", escape(_order_comment(result)), "G"),
    ]
    for seq, cls_name in enumerate(FIVE_PART, start=1):
        code = PERCENT_CODES[cls_name][0]
        records.append(_record(
            "R", str(seq), COMPONENT * 3 + code + COMPONENT + SHORT_NAMES[cls_name],
            f"{result.percent[cls_name]:.1f}", "%", "", "", "", status, "", escape(result.operator or ""),
            when, when, escape(result.device or "")))
        records.append(_record("C", "1", "I", escape(result.ci_text(cls_name)), "G"))
    records.append(_record("L", "1", "N"))
    return records


def _order_comment(result: ResultPayload) -> str:
    text = f"{result.total} leukocytes classified (target {result.target}); {result.other} other cells"
    if result.flagged or result.corrections:
        text += f"; {result.flagged} flagged for review; {result.corrections} corrected"
    if result.model_version:
        text += f"; model {result.model_version}"
    if result.signed:
        text += f"; signed by {result.signed_by}, result version {result.version}"
        if result.amended and result.amendment_reason:
            text += f"; corrected: {result.amendment_reason}"
    else:
        text += "; not signed off (preliminary)"
    return text
