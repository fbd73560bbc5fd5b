"""Outbox senders for the LIS destinations ``astm`` (serial) and ``hl7`` (MLLP).

Each returns a receipt only after the LIS acknowledged the whole message.
"""

from __future__ import annotations

import logging

from edge_app.lis.astm_e1381 import AstmSender
from edge_app.lis.astm_e1394 import build_records
from edge_app.lis.hl7_oru import build_oru, control_id
from edge_app.lis.mllp import MllpClient, parse_hostport
from edge_app.lis.serial_port import open_port
from edge_app.store.db import utcnow
from edge_app.sync.errors import redact
from edge_app.sync.outbox import OutboxEntry
from edge_app.sync.payload import ResultPayload

logger = logging.getLogger(__name__)


class AstmDestination:
    def __init__(self, port_url: str, *, baudrate: int = 9600, timeout_s: float = 15.0, retries: int = 6,
                 busy_wait_s: float = 10.0):
        self.port_url, self.baudrate, self.timeout_s = port_url, baudrate, timeout_s
        self.retries, self.busy_wait_s = retries, busy_wait_s

    def __call__(self, entry: OutboxEntry) -> str:
        records = build_records(ResultPayload.parse(entry.result_id, entry.payload), utcnow())
        port = open_port(self.port_url, self.baudrate, self.timeout_s)
        try:
            sender = AstmSender(port, timeout_s=self.timeout_s, busy_wait_s=self.busy_wait_s,
                                max_establish_tries=self.retries, max_frame_retries=self.retries)
            frames = sender.send(records)
        finally:
            port.close()
        return f"astm:{frames} frames"


class Hl7Destination:
    def __init__(self, hostport: str, *, timeout_s: float = 15.0, retries: int = 6, pause_s: float = 1.0):
        self.host, self.port = parse_hostport(hostport)
        self.timeout_s, self.retries, self.pause_s = timeout_s, retries, pause_s

    def __call__(self, entry: OutboxEntry) -> str:
        result = ResultPayload.parse(entry.result_id, entry.payload)
        message = build_oru(result)
        ctrl = control_id(entry.result_id, result.version)
        code = MllpClient(self.host, self.port, self.timeout_s).deliver(
            message, ctrl, retries=self.retries, pause_s=self.pause_s,
            redact=lambda text: redact(text, entry.payload))
        return f"hl7:{ctrl} {code}"
