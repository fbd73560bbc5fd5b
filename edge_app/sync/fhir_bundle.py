"""FHIR R4 transaction Bundle for one finalised differential.

Contents (only what the report needs; no patient data, the kiosk has none):
- one ``Observation`` per five-part class, LOINC-coded, ``valueQuantity`` in
  UCUM ``%``. The 95% confidence interval and the cell counts travel as
  Observation ``component``s with codes from ``COMPONENT_SYSTEM``:
  ``ci95`` (``valueRange`` low/high in %), ``cells-counted`` (this class) and
  ``cells-total`` (five-part cells classified), plus the same in words in
  ``note``. ``referenceRange`` is deliberately not used: a reader would take it
  for the normal range.
- one ``DiagnosticReport`` (LOINC panel) whose ``result`` lists them;
  operator as ``performer.display``, sample id as a logical ``specimen``
  reference (identifier only), device as ``Observation.device``, model
  version and backend in ``Observation.method``.
- the sign-off: ``status`` is ``final`` once a named person signed the result,
  ``preliminary`` before, and ``amended`` for a signed amendment (version > 1); the
  signer is the report's ``resultsInterpreter`` (display), and the result version
  is a ``meta.tag`` (``VERSION_TAG_SYSTEM``) so an amendment can tell whether the
  server holds it already (``fhir_sender`` updates the same resources, If-Match).
- optionally the review-crop gallery: one JPEG ``Attachment`` per counted cell
  in ``DiagnosticReport.presentedForm`` (title = label and cell id), flagged
  cells first, at most ``GALLERY_MAX``.

Every entry is a conditional create (``ifNoneExist`` on its identifier): the
report by the result id, each Observation by result id + LOINC. Sending the
same bundle again creates nothing new. Six entries in all: servers such as
Medplum cap conditional-create transactions at 8.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import uuid
from dataclasses import dataclass
from typing import List, Sequence
from urllib.parse import quote

from edge_app.labels import FIVE_PART
from edge_app.sync.loinc import LOINC_SYSTEM, PANEL_CODE, PERCENT_CODES, PERCENT_UNIT, SHORT_NAMES, UCUM_SYSTEM
from edge_app.sync.payload import ResultPayload

logger = logging.getLogger(__name__)

COMPONENT_SYSTEM = "urn:wbc-counter:observation-component"
SAMPLE_ID_SYSTEM = "urn:wbc-counter:sample-id"
DEVICE_ID_SYSTEM = "urn:wbc-counter:device"
GALLERY_MAX = 100
VERSION_TAG_SYSTEM = "urn:wbc-counter:result-version"
_CATEGORY_LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                             "code": "laboratory", "display": "Laboratory"}]}
_CATEGORY_HM = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                            "code": "HM", "display": "Hematology"}]}


@dataclass(frozen=True)
class GalleryCrop:
    cell_id: int
    label: str
    jpeg: bytes
    flagged: bool = False


def fhir_instant(text: str) -> str:
    """ISO timestamp with a zone (FHIR ``instant``); a naive one is taken as UTC."""
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.isoformat(timespec="milliseconds")


def _full_url(system: str, value: str) -> str:
    # Deterministic, so a re-sent bundle is byte-for-byte the same bundle.
    return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{system}|{value}"))


def _entry(resource_type: str, resource: dict, system: str, value: str) -> dict:
    resource = {"resourceType": resource_type, "identifier": [{"system": system, "value": value}], **resource}
    return {
        "fullUrl": _full_url(system, value),
        "resource": resource,
        "request": {"method": "POST", "url": resource_type,
                    "ifNoneExist": "identifier=" + quote(f"{system}|{value}", safe="")},
    }


def _percent(value: float) -> dict:
    return {"value": round(value, 2), "unit": PERCENT_UNIT, "system": UCUM_SYSTEM, "code": PERCENT_UNIT}


def _component(code: str, display: str, **value) -> dict:
    return {"code": {"coding": [{"system": COMPONENT_SYSTEM, "code": code, "display": display}], "text": display},
            **value}


def build_bundle(result: ResultPayload, identifier_system: str, gallery: Sequence[GalleryCrop] = ()) -> dict:
    """The transaction Bundle; the DiagnosticReport entry is always the last one."""
    when = fhir_instant(result.finalised_at)
    status = "amended" if result.amended else "final" if result.signed else "preliminary"
    issued = fhir_instant(result.signed_at) if result.signed and result.signed_at else when
    common: dict = {"status": status, "effectiveDateTime": when, "issued": issued}
    if result.operator:
        common["performer"] = [{"display": result.operator}]
    specimen = ({"identifier": {"system": SAMPLE_ID_SYSTEM, "value": result.sample_id}, "type": "Specimen"}
                if result.sample_id else None)
    method_bits = ", ".join(b for b in (f"model {result.model_version}" if result.model_version else None,
                                        result.backend,
                                        f"site profile {result.site_profile}" if result.site_profile else None)
                            if b)
    method = {"text": "Automated image classification of a blood smear (wbc-counter"
                      + (f"; {method_bits}" if method_bits else "") + ")"}

    entries: List[dict] = []
    for cls_name in FIVE_PART:
        code, display = PERCENT_CODES[cls_name]
        lo, hi = result.ci95[cls_name]
        obs = {
            **common,
            "category": [_CATEGORY_LAB],
            "code": {"coding": [{"system": LOINC_SYSTEM, "code": code, "display": display}],
                     "text": SHORT_NAMES[cls_name]},
            "valueQuantity": _percent(result.percent[cls_name]),
            "method": method,
            "note": [{"text": result.ci_text(cls_name)}],
            "component": [
                _component("ci95", f"95% confidence interval ({result.ci_method})",
                           valueRange={"low": _percent(lo), "high": _percent(hi)}),
                _component("cells-counted", "Cells of this class counted", valueInteger=result.counts[cls_name]),
                _component("cells-total", "Leukocytes classified (five-part)", valueInteger=result.total),
            ],
        }
        if specimen:
            obs["specimen"] = specimen
        if result.site_profile:  # device calibration: the site's head was mixed into the classifier
            obs["component"].append(_component("site-profile", "Site profile (device calibration)",
                                               valueString=result.site_profile))
        if result.device:
            obs["device"] = {"identifier": {"system": DEVICE_ID_SYSTEM, "value": result.device},
                             "display": result.device}
        entries.append(_entry("Observation", obs, identifier_system, f"{result.result_id}-{code}"))

    # Crops go inline as presentedForm attachments, not as Media resources: a
    # transaction of conditional creates may hold only 8 entries on Medplum
    # (strict isolation), and one Media per crop would exceed that at once.
    crops = sorted(gallery, key=lambda c: (not c.flagged, c.cell_id))[:GALLERY_MAX]
    presented = [{"contentType": "image/jpeg",
                  "title": f"{c.label} (cell {c.cell_id}{', flagged' if c.flagged else ''})",
                  "data": base64.b64encode(c.jpeg).decode("ascii")} for c in crops]

    report = {
        **common,
        "category": [_CATEGORY_HM],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": PANEL_CODE[0], "display": PANEL_CODE[1]}],
                 "text": "Leukocyte differential (five-part, automated image count)"},
        "result": [{"reference": e["fullUrl"]} for e in entries],
        "conclusion": _conclusion(result),
    }
    if specimen:
        report["specimen"] = [specimen]
    if result.signed:
        report["resultsInterpreter"] = [{"display": result.signed_by}]
        report["meta"] = {"tag": [{"system": VERSION_TAG_SYSTEM, "code": str(result.version),
                                   "display": f"result version {result.version}"}]}
    if presented:
        report["presentedForm"] = presented
    entries.append(_entry("DiagnosticReport", report, identifier_system, result.result_id))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _conclusion(result: ResultPayload) -> str:
    parts = [f"Five-part differential of {result.total} leukocytes (target {result.target})"
             f" by automated image classification; 95% CIs by the {result.ci_method} method."]
    if result.other:
        parts.append(f"{result.other} other cells (not part of the differential) seen.")
    if result.flagged or result.corrections:
        parts.append(f"{result.flagged} cells flagged for review; {result.corrections} corrected by the operator.")
    if result.signed:
        parts.append(f"Reviewed and signed by {result.signed_by} (result version {result.version}).")
    else:
        parts.append("Not yet signed off by a reviewer: preliminary.")
    if result.amended and result.amendment_reason:
        parts.append(f"Amended: {result.amendment_reason}.")
    return " ".join(parts)
