"""`wbc-counter sync`: deliver finalised results waiting in the outbox.

Default (``--once``, what the systemd timer runs): deliver every entry that is
due and exit, printing one JSON line ``{"delivered": n, "pending": n,
"failed": n}`` on stdout. ``--loop`` keeps going, one pass per
``--interval`` seconds (sooner when a retry falls due), until SIGTERM.
``--retry-failed`` first puts entries that a receiver rejected back in the
queue. Exit status: 0 when everything due was delivered, 1 when something
stays queued or failed (the reason is on stderr), 2 for a configuration or
database problem. With ``[delivery] require_signoff`` (the default) results nobody
signed off stay queued and untouched, and stderr says how many; they do not make
the exit status 1 (they wait for a person, not for a receiver).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from edge_app.config import load_config
from edge_app.store import Store
from edge_app.sync.destinations import configured_senders, missing_hint
from edge_app.sync.lock import SyncLock
from edge_app.sync.outbox import Outbox, now_utc
from edge_app.sync.signoff import SIGN_HINT, awaiting_signoff
from edge_app.sync.worker import SyncSummary, SyncWorker
from edge_app.textsafe import one_line

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("sync", help="deliver finalised results to FHIR / HL7 / ASTM receivers",
                       description="Deliver outbox entries with back-off; one JSON summary line per pass.")
    p.add_argument("--fhir", metavar="URL", help="FHIR R4 base URL (overrides [fhir] url)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token, mode 0600 "
                   "(overrides [fhir] token_file)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="deliver what is due, then exit (default)")
    mode.add_argument("--loop", action="store_true", help="keep delivering until stopped (SIGTERM/Ctrl-C)")
    p.add_argument("--interval", type=float, default=60.0, metavar="S", help="seconds between passes with --loop")
    p.add_argument("--retry-failed", action="store_true",
                   help="requeue entries a receiver rejected (after fixing the cause) before delivering")
    return p


def main(args) -> int:
    cfg = load_config(args.config, {"fhir.url": args.fhir, "fhir.token_file": args.token_file})
    store = Store(args.data_dir)
    outbox = Outbox(store)
    senders = configured_senders(cfg, store)
    worker = SyncWorker(outbox, senders, base_backoff_s=cfg.sync.base_backoff_s, max_backoff_s=cfg.sync.max_backoff_s,
                        hold=awaiting_signoff if cfg.delivery.require_signoff else None)
    lock = SyncLock(args.data_dir)
    if not lock.acquire():
        print("wbc-counter sync: another sync or 'lis send' is running; nothing done", file=sys.stderr)
        print(json.dumps(_counts(outbox, SyncSummary())))
        return 0
    with lock:
        if args.retry_failed:
            n = outbox.requeue_failed()
            logger.info("requeued %d failed entries", n)
        if not args.loop:
            return _pass(outbox, worker, senders)
        return _loop(outbox, worker, senders, args.interval)


def _counts(outbox: Outbox, summary: SyncSummary) -> dict:
    counts = outbox.counts()
    summary.pending, summary.failed = counts["pending"], counts["failed"]
    return summary.public()


def _pass(outbox: Outbox, worker: SyncWorker, senders: dict) -> int:
    summary = worker.run_once()
    print(json.dumps(summary.public()), flush=True)
    for err in dict.fromkeys(summary.errors):  # one line per distinct reason
        print(f"wbc-counter sync: {one_line(err)}", file=sys.stderr)  # server text: no escapes
    unserved = sorted(outbox.pending_destinations() - set(senders))
    for dest in unserved:
        n = outbox.counts(dest)["pending"]
        print(f"wbc-counter sync: {n} result(s) wait for '{dest}', which is not configured: {missing_hint(dest)}",
              file=sys.stderr)
    if summary.failed_now:
        print("wbc-counter sync: rejected results stay in the outbox; fix the cause, then run "
              "'wbc-counter sync --retry-failed'", file=sys.stderr)
    if summary.retrying:
        print("wbc-counter sync: undelivered results stay queued and are retried automatically", file=sys.stderr)
    if summary.held:
        print(f"wbc-counter sync: {summary.held} result(s) not sent: not signed off yet ([delivery] "
              f"require_signoff = true); {SIGN_HINT}", file=sys.stderr)
    return 1 if (summary.failed_now or summary.retrying or unserved) else 0


def _loop(outbox: Outbox, worker: SyncWorker, senders: dict, interval: float) -> int:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            _pass(outbox, worker, senders)
            due = outbox.next_due_at(signed_only=worker.hold is not None)
            wait = interval if due is None else min(interval, max(1.0, (due - now_utc()).total_seconds()))
            stop.wait(wait)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    logger.info("sync loop stopped")
    return 0
