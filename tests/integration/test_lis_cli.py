"""`wbc-counter lis send|show` end to end: real store, real serial line (socat pty
pair, pyserial socket://), real MLLP listener; failures stay queued."""

from __future__ import annotations

import logging

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from edge_app.store.db import Store  # noqa: E402
from tests.sync_fixtures import (  # noqa: E402
    finalised_session,
    free_port,
    mllp_peers,
    outbox_rows,
    pty_astm_peer,
    run_cli,
    socat_pty_pair,
    summary_line,
    tcp_astm_peer,
    write_config,
)


@pytest.fixture
def pty_pair(tmp_path):
    yield from socat_pty_pair(tmp_path)


@pytest.fixture
def mllp_peer():
    yield from mllp_peers()


def _lis(tmp_path, capsys, *argv):
    return run_cli(["lis", *argv, "--data-dir", tmp_path / "data"], capsys)


def test_lis_send_astm_over_a_pty_serial_line(tmp_path, capsys, pty_pair):
    ours, theirs = pty_pair
    store = Store(tmp_path / "data")
    sid, rid = finalised_session(store, sample_id="S-PTY-1")
    peer, thread = pty_astm_peer(theirs, nak_frames={2})
    rc, out, err = _lis(tmp_path, capsys, "send", sid[:10], "--port", ours, "--timeout", "5")
    thread.join(timeout=20)
    assert rc == 0, err
    assert summary_line(out) == {"session": sid, "destination": "astm", "status": "done"}
    assert peer.error is None and all(ok for *_, ok in peer.frames) and "NAK 2" in peer.events
    records = peer.records()
    assert records[2].split("|")[2] == "S-PTY-1"
    assert [r.split("|")[2].split("^")[3] for r in records if r.startswith("R|")] == \
        ["770-8", "736-9", "5905-5", "713-8", "706-2"]
    (row,) = outbox_rows(store, "astm")
    assert row["status"] == "done" and row["result_id"] == rid


def test_lis_send_astm_over_socket_url(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    url, peer, thread = tcp_astm_peer()
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--port", url, "--timeout", "5")
    thread.join(timeout=20)
    assert rc == 0, err
    assert peer.error is None and peer.records()[-1] == "L|1|N"


def test_missing_serial_port_is_a_clear_error_and_the_result_stays_queued(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--port", "/dev/ttyWBC-NOT-THERE")
    assert rc == 1
    assert "serial port /dev/ttyWBC-NOT-THERE does not exist" in err and "stays queued" in err
    assert "Traceback" not in err
    (row,) = outbox_rows(store, "astm")
    assert row["status"] == "pending" and row["attempts"] == 1


def test_lis_send_hl7_over_mllp(tmp_path, capsys, mllp_peer):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, sample_id="S-HL7-1")
    peer = mllp_peer(["AR", "AA"])
    write_config(tmp_path / "c.toml", "")
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport, "--config", tmp_path / "c.toml")
    assert rc == 0, err
    assert summary_line(out)["status"] == "done"
    assert len(peer.messages) == 2
    msg = parse_message(peer.messages[-1], validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert msg.validate()
    assert outbox_rows(store, "hl7")[0]["status"] == "done"


def test_hl7_rejected_is_failed_and_sync_retry_failed_requeues(tmp_path, capsys, mllp_peer):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    peer = mllp_peer(["AE"])
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport, "--retries", "1")
    assert rc == 1 and summary_line(out)["status"] == "failed"
    assert "answered AE" in err and "--retry-failed" in err
    assert outbox_rows(store, "hl7")[0]["status"] == "failed"

    # The LIS is fixed; sync (with [lis] hl7 configured) delivers it after a requeue.
    good = mllp_peer(["AA"])
    cfg = write_config(tmp_path / "c.toml", f'[lis]\nhl7 = "{good.hostport}"\n')
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--config", cfg, "--retry-failed"], capsys)
    assert summary_line(out)["delivered"] == 1
    assert outbox_rows(store, "hl7")[0]["status"] == "done" and len(good.messages) == 1
    # fhir is still queued and not configured: sync says what to set.
    assert rc == 1 and "wait for 'fhir'" in err and "[fhir] url" in err


def test_unreachable_hl7_listener_stays_queued_for_sync(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    dead = f"127.0.0.1:{free_port()}"
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", dead, "--retries", "0")
    assert rc == 1 and summary_line(out)["status"] == "pending"
    assert "did not accept" in err and "stays queued" in err


def test_already_delivered_result_can_be_sent_again(tmp_path, capsys, mllp_peer):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    peer = mllp_peer(["AA"])
    assert _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport)[0] == 0
    rc, out, _ = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport)
    assert rc == 0 and summary_line(out)["status"] == "done" and len(peer.messages) == 2
    assert len(outbox_rows(store, "hl7")) == 1


@pytest.mark.parametrize("argv, words", [
    (["send", "nosuchsession", "--port", "loop://"], "no session 'nosuchsession'"),
    (["send", "OPEN", "--port", "loop://"], "has no result yet"),
    (["send", "DONE", "--hl7", "no-port-here"], "not host:port"),
    (["send", "DONE"], "no LIS given"),
    (["send", "DONE", "--port", "bogus://x"], "not usable"),
])
def test_bad_input_gets_one_clear_line(tmp_path, capsys, argv, words):
    store = Store(tmp_path / "data")
    done, _ = finalised_session(store)
    open_sid = store.open_session(target=100, sample_id="S-open")
    argv = [{"OPEN": open_sid, "DONE": done}.get(a, a) for a in argv]
    rc, out, err = _lis(tmp_path, capsys, *argv)
    assert rc in (1, 2)
    assert words in err and "Traceback" not in err


def test_lis_show_prints_the_messages(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store)
    rc, out, _ = _lis(tmp_path, capsys, "show", sid)
    assert rc == 0 and out.startswith("H|\\^&|") and out.strip().endswith("L|1|N")
    rc, out, _ = _lis(tmp_path, capsys, "show", sid, "--format", "hl7")
    assert rc == 0 and out.startswith("MSH|^~\\&|WBC-COUNTER")
    assert outbox_rows(store, "astm") == [] and outbox_rows(store, "hl7") == []  # show sends nothing


def test_no_sample_id_or_operator_in_lis_logs(tmp_path, capsys, caplog, mllp_peer):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, sample_id="SAMPLE-PRIVATE-LIS", operator="Dr Hidden Name")
    caplog.set_level(logging.DEBUG)
    peer = mllp_peer(["AE", "AA"])
    url, astm, thread = tcp_astm_peer(nak_frames={1})
    rc1, _, err1 = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport, "-v")
    rc2, _, err2 = _lis(tmp_path, capsys, "send", sid, "--port", url, "--timeout", "5", "-v")
    thread.join(timeout=20)
    rc3, _, err3 = _lis(tmp_path, capsys, "send", sid, "--port", "/dev/ttyWBC-NOT-THERE", "-v")
    assert (rc1, rc2) == (0, 0) and rc3 == 1
    assert "SAMPLE-PRIVATE-LIS" in peer.messages[0]  # it did go to the LIS...
    logged = caplog.text + err1 + err2 + err3
    assert "acknowledged" in caplog.text and "ASTM transfer complete" in caplog.text
    for secret in ("SAMPLE-PRIVATE-LIS", "Hidden Name"):  # ...but never into a log
        assert secret not in logged


def test_a_failed_re_send_of_a_delivered_result_is_clear_and_keeps_it_done(tmp_path, capsys, mllp_peer):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, sample_id="S-RESEND-1")
    peer = mllp_peer(["AA"])
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport)
    assert rc == 0, err
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there any more
    rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", closed, "--retries", "0", "--timeout", "2")
    assert rc == 1 and "re-send to hl7 failed" in err and "Traceback" not in err
    assert "S-RESEND-1" not in err  # the sample id is never echoed into logs
    assert outbox_rows(store, "hl7")[0]["status"] == "done"


def test_a_lis_rejection_that_quotes_the_sample_id_is_logged_redacted(tmp_path, capsys, mllp_peer, caplog):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, sample_id="S-ECHO-77")
    peer = mllp_peer(["AR:unknown specimen S-ECHO-77", "AA"])
    with caplog.at_level(logging.WARNING, logger="edge_app.lis.mllp"):
        rc, out, err = _lis(tmp_path, capsys, "send", sid, "--hl7", peer.hostport)
    assert rc == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.name == "edge_app.lis.mllp"]
    assert any("unknown specimen <sample-id>" in w for w in warnings), warnings
    assert not any("S-ECHO-77" in w for w in warnings)
