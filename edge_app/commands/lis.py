"""`wbc-counter lis`: send one finalised result to the laboratory system.

``lis send SESSION --port URL`` speaks ASTM E1381/E1394 over a serial line
(``/dev/ttyUSB0``, or a pyserial URL such as ``socket://host:port``);
``lis send SESSION --hl7 host:port`` sends an HL7 v2.5.1 ORU^R01 over MLLP.
Without either, the ``[lis] port`` / ``[lis] hl7`` config values are used.
The send goes through the outbox (destination ``astm`` / ``hl7``): if it
fails, the result stays queued and ``wbc-counter sync`` retries it when that
destination is configured. ``lis show SESSION --format astm|hl7`` prints the
message instead of sending it.
"""

from __future__ import annotations

import json
import logging
import sys

from edge_app.config import ConfigError, load_config
from edge_app.store import Store, StoreError
from edge_app.sync.destinations import astm_sender, hl7_sender
from edge_app.sync.errors import DeliveryError, redact
from edge_app.sync.lock import SyncLock
from edge_app.sync.outbox import Outbox
from edge_app.sync.payload import ResultPayload, refuse_unsendable
from edge_app.sync.signoff import SIGN_HINT, is_signed
from edge_app.sync.worker import SyncWorker
from edge_app.textsafe import one_line

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("lis", help="send a result to the LIS (ASTM over serial, HL7 v2 over MLLP)",
                       description="lis send SESSION --port URL | --hl7 HOST:PORT;  lis show SESSION --format astm|hl7")
    p.add_argument("lis_action", choices=("send", "show"), metavar="ACTION",
                   help="send: deliver the result; show: print the message instead")
    p.add_argument("session", help="session id (a unique prefix is enough)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", metavar="URL", help="ASTM serial port: /dev/ttyUSB0, socket://host:port, loop://")
    where.add_argument("--hl7", metavar="HOST:PORT", help="HL7 v2 MLLP listener of the LIS")
    p.add_argument("--baudrate", type=int, default=None, help="serial speed (overrides [lis] baudrate)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the LIS (overrides [lis] timeout_s)")
    p.add_argument("--retries", type=int, default=None,
                   help="resends on NAK/AE/AR/timeout (overrides [lis] retries)")
    p.add_argument("--format", choices=("astm", "hl7"), default=None, help="message format for 'show'")
    return p


def _result(store: Store, session: str):
    row = store.session(session)
    res = store.conn.execute("SELECT result_id, payload FROM results WHERE session_id=?", (row["id"],)).fetchone()
    if res is None:
        raise StoreError(f"session {row['id']} has no result yet (status '{row['status']}'): "
                         "finish the count before sending it")
    return row["id"], res["result_id"], json.loads(res["payload"])


def main(args) -> int:
    cfg = load_config(args.config, {"lis.baudrate": args.baudrate,
                                    "lis.timeout_s": args.timeout,
                                    "lis.retries": args.retries})
    store = Store(args.data_dir)
    session_id, result_id, payload = _result(store, args.session)
    if payload.get("not_reported") and args.lis_action == "send":
        print(f"wbc-counter lis: session {session_id} was counted while the self-test had not passed "
              f"({payload['not_reported']}); it is never reported. Run 'wbc-counter selftest', then count "
              "the sample again.", file=sys.stderr)
        return 1
    if args.lis_action == "send":
        state = store.result_state(session_id)  # the column is the record; the payload repeats it
        try:
            refuse_unsendable(result_id, dict(payload, state=state[0] if state else payload.get("state"),
                                              reason=(state[1] if state else None) or payload.get("reason")))
        except DeliveryError as exc:
            print(f"wbc-counter lis: session {session_id}: {exc}", file=sys.stderr)
            return 1
    if args.lis_action == "send" and cfg.delivery.require_signoff and not is_signed(payload):
        print(f"wbc-counter lis: session {session_id} is not signed off, so it is not sent ([delivery] "
              f"require_signoff = true): {SIGN_HINT.replace('them', 'it').replace('SESSION', session_id[:8])}",
              file=sys.stderr)
        return 1
    if args.lis_action == "show":
        return _show(args.format or ("hl7" if args.hl7 else "astm"), result_id, payload)

    targets = []
    if args.port or args.hl7:
        targets = [("astm", astm_sender(cfg, args.port))] if args.port else [("hl7", hl7_sender(cfg, args.hl7))]
    else:
        if cfg.lis.port:
            targets.append(("astm", astm_sender(cfg, cfg.lis.port)))
        if cfg.lis.hl7:
            targets.append(("hl7", hl7_sender(cfg, cfg.lis.hl7)))
    if not targets:
        raise ConfigError("no LIS given: pass --port URL (ASTM serial) or --hl7 host:port, "
                          "or set [lis] port / hl7 in the config")

    lock = SyncLock(args.data_dir)
    if not lock.acquire():
        print("wbc-counter lis: a sync is delivering right now; try again in a minute", file=sys.stderr)
        return 1
    rc = 0
    with lock:
        outbox = Outbox(store)
        for dest, sender in targets:
            worker = SyncWorker(outbox, {dest: sender}, base_backoff_s=cfg.sync.base_backoff_s,
                                max_backoff_s=cfg.sync.max_backoff_s)
            rc = max(rc, _send(worker, dest, session_id, result_id))
    return rc


def _send(worker: SyncWorker, dest: str, session_id: str, result_id: str) -> int:
    outbox, sender = worker.outbox, worker.senders[dest]
    outbox.enqueue(result_id, dest)  # queued first: a failed send is retried by 'sync', not lost
    entry = outbox.get(result_id, dest)
    if entry.status == "done":
        logger.info("session %s was already delivered to %s; sending it again on request", session_id, dest)
        try:
            sender(entry)
        except DeliveryError as exc:
            print(f"wbc-counter lis: re-send to {dest} failed: {one_line(redact(str(exc), entry.payload))}",
                  file=sys.stderr)
            return 1
        except Exception as exc:  # e.g. a serial port that vanished mid-send; the delivered entry stays done
            logger.debug("re-send failed", exc_info=True)
            print(f"wbc-counter lis: re-send to {dest} failed: {type(exc).__name__}: "
                  f"{redact(str(exc), entry.payload)} (check the cable/port and send again)", file=sys.stderr)
            return 1
    else:
        worker.deliver_now(entry)
    row = outbox.conn.execute("SELECT status, last_error FROM outbox WHERE id=?", (entry.id,)).fetchone()
    print(json.dumps({"session": session_id, "destination": dest, "status": row["status"]}), flush=True)
    if row["status"] == "done":
        return 0
    if row["status"] == "failed":
        print(f"wbc-counter lis: {dest}: {one_line(row['last_error'])}; the result stays in the outbox: fix the "
              "cause, then 'wbc-counter sync --retry-failed' or send again", file=sys.stderr)
    else:
        print(f"wbc-counter lis: {dest}: {one_line(row['last_error'])}; the result stays queued: send again, or let "
              "'wbc-counter sync' retry it (needs [lis] configured)", file=sys.stderr)
    return 1


def _show(fmt: str, result_id: str, payload: dict) -> int:
    try:
        result = ResultPayload.parse(result_id, payload)
    except DeliveryError as exc:
        print(f"wbc-counter lis: {one_line(exc)}", file=sys.stderr)
        return 1
    if fmt == "hl7":
        from edge_app.lis.hl7_oru import build_oru
        sys.stdout.write(build_oru(result).replace("\r", "\n"))
    else:
        from edge_app.lis.astm_e1394 import build_records
        from edge_app.store.db import utcnow
        sys.stdout.write("\n".join(build_records(result, utcnow())) + "\n")
    return 0
