"""Senders for every destination the config (and command line) names.

``fhir`` needs ``[fhir] url`` (or ``--fhir``), ``hl7`` needs ``[lis] hl7``,
``astm`` needs ``[lis] port``. Entries for a destination with no sender
stay pending; ``missing_hint`` says what to set.
"""

from __future__ import annotations

import logging
from typing import Dict

from edge_app.config import Config, ConfigError
from edge_app.store.db import Store
from edge_app.sync.fhir_client import FhirClient
from edge_app.sync.fhir_sender import FhirSender, store_gallery
from edge_app.sync.token import read_token_file
from edge_app.sync.worker import Sender

logger = logging.getLogger(__name__)

_HINTS = {
    "fhir": "set [fhir] url in the config or pass --fhir URL",
    "hl7": "set [lis] hl7 = \"host:port\" in the config, or use 'wbc-counter lis send SESSION --hl7 host:port'",
    "astm": "set [lis] port in the config, or use 'wbc-counter lis send SESSION --port URL'",
}


def missing_hint(destination: str) -> str:
    return _HINTS.get(destination, "unknown destination")


def fhir_sender(cfg: Config, store: Store) -> FhirSender:
    token = read_token_file(cfg.fhir.token_file) if cfg.fhir.token_file else None
    client = FhirClient(cfg.fhir.url, token=token, verify_tls=cfg.fhir.verify_tls, timeout_s=cfg.fhir.timeout_s)
    return FhirSender(client, cfg.fhir.identifier_system, store_gallery(store) if cfg.fhir.attach_gallery else None)


def hl7_sender(cfg: Config, hostport: str) -> Sender:
    from edge_app.lis.senders import Hl7Destination
    try:
        return Hl7Destination(hostport, timeout_s=cfg.lis.timeout_s, retries=cfg.lis.retries)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def astm_sender(cfg: Config, port_url: str) -> Sender:
    from edge_app.lis.senders import AstmDestination
    return AstmDestination(port_url, baudrate=cfg.lis.baudrate, timeout_s=cfg.lis.timeout_s, retries=cfg.lis.retries)


def configured_senders(cfg: Config, store: Store) -> Dict[str, Sender]:
    senders: Dict[str, Sender] = {}
    if cfg.fhir.url:
        senders["fhir"] = fhir_sender(cfg, store)
    if cfg.lis.hl7:
        senders["hl7"] = hl7_sender(cfg, cfg.lis.hl7)
    if cfg.lis.port:
        senders["astm"] = astm_sender(cfg, cfg.lis.port)
    return senders
