"""Results to the laboratory information system.

- ``astm_e1394``: the records (H, P, O, R per class, C, L) of one result;
- ``astm_e1381``: the low-level serial protocol that carries them (ENQ/ACK,
  numbered frames with checksums, NAK retries, timeouts, EOT);
- ``hl7_oru``: the same result as an HL7 v2.5.1 ORU^R01 message;
- ``mllp``: the HL7 minimal lower layer protocol client with ACK checks;
- ``senders``: outbox senders for the ``astm`` and ``hl7`` destinations.
"""
