"""Outbox sender for the ``fhir`` destination: result -> Bundle -> server -> receipt.

A first version is a transaction of conditional creates (``fhir_bundle``). An
amendment (a signed version > 1) updates the SAME DiagnosticReport and
Observations: it reads them by identifier, stops if the report already carries
this version's tag (the confirmation of an earlier try was lost), and otherwise
sends one transaction of PUTs with ``If-Match`` on each resource's version id, so
an update made meanwhile by someone else is refused (412) instead of overwritten;
the entry stays queued and the next try reads the resources again.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional
from urllib.parse import quote

from edge_app.store.db import Store
from edge_app.sync.errors import PermanentError, TransientError
from edge_app.sync.fhir_bundle import VERSION_TAG_SYSTEM, GalleryCrop, build_bundle
from edge_app.sync.fhir_client import FhirClient
from edge_app.sync.outbox import OutboxEntry
from edge_app.sync.payload import ResultPayload

logger = logging.getLogger(__name__)

GalleryLoader = Callable[[str], List[GalleryCrop]]


def store_gallery(store: Store) -> GalleryLoader:
    """Review crops of a session from the cells table (cells with a JPEG, not deleted)."""
    def load(session_id: str) -> List[GalleryCrop]:
        return [GalleryCrop(int(r["id"]), r["label"], bytes(r["crop"]), bool(r["flagged"]))
                for r in store.cells(session_id) if r["crop"]]
    return load


class FhirSender:
    def __init__(self, client: FhirClient, identifier_system: str, gallery: Optional[GalleryLoader] = None):
        self.client = client
        self.identifier_system = identifier_system
        self.gallery = gallery

    def bundle_for(self, entry: OutboxEntry) -> dict:
        result = ResultPayload.parse(entry.result_id, entry.payload)
        crops = self.gallery(entry.session_id) if self.gallery else []
        return build_bundle(result, self.identifier_system, crops)

    def __call__(self, entry: OutboxEntry) -> str:
        result = ResultPayload.parse(entry.result_id, entry.payload)
        if result.amended:
            return self._amend(entry, result)
        response = self.client.transaction(self.bundle_for(entry))
        # The report is the bundle's last entry, so its answer is the last one too.
        location = ((response["entry"][-1].get("response") or {}).get("location") or "")
        return location.split("/_history/")[0] or "confirmed"

    # -- amendments ---------------------------------------------------------------
    def _search(self, resource_type: str, identifiers: List[str]) -> List[dict]:
        query = ",".join(quote(f"{self.identifier_system}|{v}", safe="") for v in identifiers)
        _, body = self.client.request("GET", f"{resource_type}?identifier={query}&_count=50")
        return [e["resource"] for e in (body or {}).get("entry") or [] if "resource" in e]

    def _amend(self, entry: OutboxEntry, result: ResultPayload) -> str:
        bundle = self.bundle_for(entry)
        reports = self._search("DiagnosticReport", [result.result_id])
        if not reports:  # the earlier version never arrived: create it as it is now
            response = self.client.transaction(bundle)
            location = ((response["entry"][-1].get("response") or {}).get("location") or "")
            return location.split("/_history/")[0] or "confirmed"
        if len(reports) > 1:
            raise PermanentError(f"FHIR server {self.client.host} holds {len(reports)} DiagnosticReports for "
                                 f"result {result.result_id[:12]}: merge them on the server, then requeue")
        report = reports[0]
        held = [t.get("code") for t in (report.get("meta") or {}).get("tag") or []
                if t.get("system") == VERSION_TAG_SYSTEM]
        if held and held[0].isdigit() and int(held[0]) >= result.version:
            return f"DiagnosticReport/{report['id']} (version {held[0]} already there)"

        idents = [e["resource"]["identifier"][0]["value"] for e in bundle["entry"][:-1]]
        existing = {r["identifier"][0]["value"]: r for r in self._search("Observation", idents)
                    if r.get("identifier")}
        refs = []
        for e in bundle["entry"][:-1]:
            found = existing.get(e["resource"]["identifier"][0]["value"])
            if found is None:  # kept as a conditional create
                refs.append({"reference": e["fullUrl"]})
                continue
            e["resource"]["id"] = found["id"]
            e["request"] = _put("Observation", found)
            refs.append({"reference": f"Observation/{found['id']}"})
        last = bundle["entry"][-1]
        last["resource"]["id"] = report["id"]
        last["resource"]["result"] = refs
        last["request"] = _put("DiagnosticReport", report)
        try:
            self.client.transaction(bundle)
        except PermanentError as exc:
            if "412" in str(exc) or "recondition" in str(exc):
                raise TransientError(f"FHIR server {self.client.host}: the report changed on the server since it "
                                     "was read (If-Match refused); it is read again on the next try") from None
            raise
        return f"DiagnosticReport/{report['id']} (amended, version {result.version})"


def _put(resource_type: str, current: dict) -> dict:
    version = (current.get("meta") or {}).get("versionId")
    request = {"method": "PUT", "url": f"{resource_type}/{current['id']}"}
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return request
