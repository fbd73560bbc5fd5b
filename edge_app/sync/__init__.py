"""Store-and-forward delivery of finalised results from the local outbox.

``Outbox`` reads and updates the outbox table, ``SyncWorker`` delivers due
entries through one sender per destination (``fhir``, ``hl7``, ``astm``) with
exponential back-off and jitter, and ``fhir_bundle`` / ``fhir_client`` turn a
result into a FHIR R4 transaction and post it.
"""

from edge_app.sync.errors import DeliveryError, PermanentError, TransientError
from edge_app.sync.outbox import Outbox, OutboxEntry
from edge_app.sync.worker import SyncSummary, SyncWorker

__all__ = ["DeliveryError", "Outbox", "OutboxEntry", "PermanentError", "SyncSummary", "SyncWorker",
           "TransientError"]
