"""Outbox sender for the ``fhir`` destination: result -> Bundle -> server -> receipt."""

from __future__ import annotations

import logging
from typing import Callable, List, Optional

from edge_app.store.db import Store
from edge_app.sync.fhir_bundle import GalleryCrop, build_bundle
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
        response = self.client.transaction(self.bundle_for(entry))
        # The report is the bundle's last entry, so its answer is the last one too.
        location = ((response["entry"][-1].get("response") or {}).get("location") or "")
        return location.split("/_history/")[0] or "confirmed"
