"""Outbox and worker on a real SQLite store: back-off with jitter, claim-before-send,
retry classes, requeue, restarts. Senders here are plain callables that play
a receiver's answers; the real receivers are exercised in test_fhir_sync,
test_astm, test_hl7 and test_lis_cli."""

from __future__ import annotations

import datetime as dt
import logging
import random

import pytest

from edge_app.store.db import Store  # noqa: E402
from edge_app.sync.backoff import backoff_delay  # noqa: E402
from edge_app.sync.errors import PermanentError, TransientError  # noqa: E402
from edge_app.sync.outbox import Outbox, iso, now_utc  # noqa: E402
from edge_app.sync.worker import SyncWorker  # noqa: E402
from tests.sync_fixtures import finalised_session, outbox_rows  # noqa: E402


class Script:
    """A receiver that answers each call with the next scripted outcome."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, entry):
        self.calls.append(entry.result_id)
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        return "receipt-" + entry.result_id[:6]


def _store(tmp_path, n=1):
    store = Store(tmp_path / "data")
    rids = [finalised_session(store, sample_id=f"S-{i}")[1] for i in range(n)]
    return store, rids


def _worker(store, senders, **kw):
    return SyncWorker(Outbox(store), senders, rng=random.Random(1), **kw)


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(7)
    for attempts in range(1, 12):
        exp = min(300.0, 5.0 * 2 ** (attempts - 1))
        delays = [backoff_delay(attempts, 5.0, 300.0, rng) for _ in range(200)]
        assert all(exp / 2 <= d <= exp for d in delays)
        assert max(delays) - min(delays) > exp / 4  # really jittered, not one value
    assert backoff_delay(50, 5.0, 300.0, rng) <= 300.0


def test_finalise_queues_and_worker_delivers_then_marks_done(tmp_path):
    store, rids = _store(tmp_path, 2)
    receiver = Script()
    summary = _worker(store, {"fhir": receiver}).run_once()
    assert summary.public() == {"delivered": 2, "pending": 0, "failed": 0}
    assert receiver.calls == rids
    rows = outbox_rows(store)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["done_at"] for r in rows)
    assert store.last_event("delivered") is not None
    # Done entries are never sent again.
    assert _worker(store, {"fhir": receiver}).run_once().delivered == 0 and len(receiver.calls) == 2


def test_transient_error_keeps_entry_pending_until_its_backoff_passes(tmp_path):
    store, (rid,) = _store(tmp_path)
    receiver = Script(TransientError("server said 503"))
    w = _worker(store, {"fhir": receiver}, base_backoff_s=60, max_backoff_s=600)
    before = now_utc()
    s = w.run_once()
    assert s.public() == {"delivered": 0, "pending": 1, "failed": 0} and s.retrying == 1
    row = outbox_rows(store)[0]
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"] == "server said 503"
    wait = (dt.datetime.fromisoformat(row["next_attempt_at"]) - before).total_seconds()
    assert 30 <= wait <= 61
    # Not due: a pass now does not call the receiver.
    assert w.run_once().delivered == 0 and len(receiver.calls) == 1
    # Once due, it goes out.
    store.conn.execute("UPDATE outbox SET next_attempt_at=?", (iso(now_utc()),))
    assert w.run_once().delivered == 1
    assert outbox_rows(store)[0]["attempts"] == 2


def test_retry_after_hint_is_honoured(tmp_path):
    store, _ = _store(tmp_path)
    w = _worker(store, {"fhir": Script(TransientError("429", retry_after_s=500))}, base_backoff_s=1,
                max_backoff_s=3600)
    before = now_utc()
    w.run_once()
    wait = (dt.datetime.fromisoformat(outbox_rows(store)[0]["next_attempt_at"]) - before).total_seconds()
    assert wait >= 499


def test_permanent_error_marks_failed_kept_and_requeueable(tmp_path):
    store, _ = _store(tmp_path)
    receiver = Script(PermanentError("HTTP 422: bad code"))
    w = _worker(store, {"fhir": receiver})
    s = w.run_once()
    assert s.public() == {"delivered": 0, "pending": 0, "failed": 1} and s.failed_now == 1
    assert outbox_rows(store)[0]["last_error"] == "HTTP 422: bad code"
    assert w.run_once().delivered == 0 and len(receiver.calls) == 1
    assert Outbox(store).requeue_failed() == 1
    row = outbox_rows(store)[0]
    assert row["status"] == "pending" and row["attempts"] == 0 and "HTTP 422" in row["last_error"]
    assert w.run_once().delivered == 1


def test_receiver_down_skips_its_other_entries_but_not_other_destinations(tmp_path):
    store, rids = _store(tmp_path, 3)
    outbox = Outbox(store)
    for rid in rids:
        outbox.enqueue(rid, "hl7")
    fhir = Script(TransientError("connection refused", receiver_down=True))
    hl7 = Script()
    s = _worker(store, {"fhir": fhir, "hl7": hl7}).run_once()
    assert len(fhir.calls) == 1 and len(hl7.calls) == 3
    assert s.delivered == 3 and s.pending == 3
    assert [r["attempts"] for r in outbox_rows(store, "fhir")] == [1, 0, 0]


def test_one_slow_failure_does_not_block_other_entries(tmp_path):
    store, _ = _store(tmp_path, 3)
    receiver = Script(TransientError("timeout on this one"), "ok", "ok")
    s = _worker(store, {"fhir": receiver}).run_once()
    assert s.delivered == 2 and s.pending == 1


def test_a_bug_in_a_sender_loses_nothing(tmp_path, caplog):
    store, _ = _store(tmp_path, 2)
    receiver = Script(KeyError("S-0"), "ok")  # an exception whose text is a sample id
    caplog.set_level(logging.DEBUG)
    s = _worker(store, {"fhir": receiver}).run_once()
    assert s.delivered == 1 and s.pending == 1
    err = outbox_rows(store)[0]["last_error"]
    assert "internal error KeyError at test_outbox.py:" in err
    assert "S-0" not in err and "S-0" not in caplog.text


def test_entries_without_a_sender_wait(tmp_path):
    store, (rid,) = _store(tmp_path)
    Outbox(store).enqueue(rid, "astm")
    s = _worker(store, {"fhir": Script()}).run_once()
    assert s.delivered == 1 and s.pending == 1
    assert Outbox(store).pending_destinations() == {"astm"}


def test_claim_survives_a_restart(tmp_path):
    """Claimed, then the process dies before the answer: after reopening the
    database the entry is still pending, its attempt counted and its retry booked."""
    store, (rid,) = _store(tmp_path)
    outbox = Outbox(store)
    entry = outbox.due()[0]
    retry_at = now_utc() + dt.timedelta(seconds=30)
    assert outbox.claim(entry.id, retry_at)
    store.close()

    again = Store(tmp_path / "data")
    row = outbox_rows(again)[0]
    assert row["status"] == "pending" and row["attempts"] == 1
    assert row["next_attempt_at"] == iso(retry_at)
    assert Outbox(again).due() == []
    assert Outbox(again).due(now=retry_at + dt.timedelta(seconds=1))[0].result_id == rid


def test_claim_refuses_an_entry_no_longer_pending(tmp_path):
    store, _ = _store(tmp_path)
    outbox = Outbox(store)
    entry = outbox.due()[0]
    outbox.mark_done(entry.id)
    assert not outbox.claim(entry.id, now_utc())


def test_enqueue_is_idempotent_and_checks_the_destination(tmp_path):
    store, (rid,) = _store(tmp_path)
    outbox = Outbox(store)
    assert outbox.enqueue(rid, "hl7") is True
    assert outbox.enqueue(rid, "hl7") is False
    assert outbox.enqueue(rid, "fhir") is False  # finalise_session queued it already
    with pytest.raises(ValueError, match="unknown destination"):
        outbox.enqueue(rid, "email")


def test_errors_echoing_sample_id_or_operator_are_redacted(tmp_path, caplog):
    store = Store(tmp_path / "data")
    finalised_session(store, sample_id="SECRET-SAMPLE-9", operator="Nurse Confidential")
    receiver = Script(PermanentError("invalid specimen SECRET-SAMPLE-9 by Nurse Confidential"))
    caplog.set_level(logging.DEBUG)
    s = _worker(store, {"fhir": receiver}).run_once()
    stored = outbox_rows(store)[0]["last_error"]
    assert stored == "invalid specimen <sample-id> by <operator>"
    for text in (stored, caplog.text, " ".join(s.errors)):
        assert "SECRET-SAMPLE-9" not in text and "Confidential" not in text
