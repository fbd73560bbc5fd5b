"""ASTM E1381 framing and E1394 records, checked by an independent decoder on
the far end of a real line: a socat pty pair and a pyserial socket:// link."""

from __future__ import annotations

import time

import pytest
import serial

from edge_app.lis.astm_e1381 import AstmSender, frames_for  # noqa: E402
from edge_app.lis.astm_e1394 import build_records, escape  # noqa: E402
from edge_app.lis.serial_port import open_port  # noqa: E402
from edge_app.store.db import Store  # noqa: E402
from edge_app.sync.errors import PermanentError, TransientError  # noqa: E402
from edge_app.sync.outbox import Outbox  # noqa: E402
from edge_app.sync.payload import ResultPayload  # noqa: E402
from tests.sync_fixtures import (  # noqa: E402
    ENQ,
    NAK,
    astm_checksum,
    finalised_session,
    pty_astm_peer,
    socat_pty_pair,
    tcp_astm_peer,
)


@pytest.fixture
def pty_pair(tmp_path):
    yield from socat_pty_pair(tmp_path)


def _result(tmp_path, **kw):
    store = Store(tmp_path / "data")
    finalised_session(store, **kw)
    e = Outbox(store).due()[0]
    return ResultPayload.parse(e.result_id, e.payload)


def _records(tmp_path, **kw):
    return build_records(_result(tmp_path, **kw), "2025-03-04T09:20:00+00:00")


def _split(frame: bytes):
    assert frame[:1] == b"\x02" and frame[-2:] == b"\r\n"
    return frame[1:2], frame[2:-5], frame[-5:-4], frame[-4:-2]


# -- framing -------------------------------------------------------------------
def test_frames_numbered_1_to_7_then_0_with_correct_checksums(tmp_path):
    records = ["R|%d|x" % i for i in range(17)]
    frames = frames_for(records)
    assert [f[1:2] for f in frames] == [str(n % 8).encode() for n in range(1, 18)]
    for fr in frames:
        fn, text, term, cs = _split(fr)
        assert term == b"\x03" and text.endswith(b"\r")
        assert astm_checksum(fn + text + term) == cs


def test_checksum_matches_a_hand_computed_frame():
    # "1H|\^&<CR><ETX>": 0x31+0x48+0x7C+0x5C+0x5E+0x26+0x0D+0x03 = 485 = 0x1E5 -> "E5"
    (fr,) = frames_for(["H|\\^&"])
    assert fr == b"\x021H|\\^&\r\x03E5\r\n"


def test_long_record_split_into_etb_frames_of_240_chars(tmp_path):
    record = "C|1|I|" + "x" * 600 + "|G"
    frames = frames_for(["H|\\^&", record, "L|1|N"])
    parts = [_split(f) for f in frames]
    assert [p[2] for p in parts] == [b"\x03", b"\x17", b"\x17", b"\x03", b"\x03"]
    assert all(len(p[1]) <= 240 for p in parts) and all(len(f) <= 247 for f in frames)
    assert b"".join(p[1] for p in parts[1:4]) == record.encode() + b"\r"
    for fn, text, term, cs in parts:
        assert astm_checksum(fn + text + term) == cs


# -- records -------------------------------------------------------------------
def test_records_h_p_o_r_per_class_c_l(tmp_path):
    records = _records(tmp_path, sample_id="S-42", operator="op.bob")
    kinds = [r[0] for r in records]
    assert kinds == ["H", "P", "O", "C"] + ["R", "C"] * 5 + ["L"]
    h = records[0].split("|")
    assert records[0].startswith("H|\\^&|") and h[11] == "P" and h[12] == "LIS2-A2"
    o = records[2].split("|")
    assert o[2] == "S-42" and o[25] == "F"
    codes = []
    for r, c in zip(records[4:14:2], records[5:15:2]):
        f = r.split("|")
        codes.append(f[2].split("^")[3])
        assert f[4] == "%" and f[8] == "F" and f[10] == "op.bob" and f[13] == "kiosk-7"
        assert "95% CI" in c and "cells" in c
    assert codes == ["770-8", "736-9", "5905-5", "713-8", "706-2"]
    assert records[4].split("|")[3] == "58.0"
    assert records[-1] == "L|1|N"


def test_delimiters_in_free_text_are_escaped(tmp_path):
    records = _records(tmp_path, sample_id="A|B^C\\D&E", operator="x\ry")
    o = records[2].split("|")
    assert o[2] == "A&F&B&S&C&R&D&E&E"
    assert all("\r" not in r and "\n" not in r for r in records)
    assert escape("plain") == "plain"


# -- the line protocol over a real pty pair (socat) -------------------------------
def test_transfer_over_pty_with_nak_then_ack_retry(tmp_path, pty_pair):
    ours, theirs = pty_pair
    records = _records(tmp_path)
    peer, thread = pty_astm_peer(theirs, nak_frames={3})
    port = open_port(ours, 9600, 5.0)
    try:
        sent = AstmSender(port, timeout_s=5.0).send(records)
    finally:
        port.close()
    thread.join(timeout=20)
    assert peer.error is None, peer.error
    assert sent == len(records)
    assert all(ok for *_, ok in peer.frames)  # every checksum right
    assert peer.events[0] == "ENQ" and peer.events[-1] == "EOT" and "NAK 3" in peer.events
    # The NAKed frame came again with the same frame number, then numbering went on.
    fns = [fn for fn, *_ in peer.frames]
    assert fns[2] == fns[3] == b"3"
    assert [fn for fn, *_ in peer.accepted] == [str(n % 8).encode() for n in range(1, len(records) + 1)]
    assert peer.records() == records


def test_transfer_over_socket_url(tmp_path):
    records = _records(tmp_path)
    url, peer, thread = tcp_astm_peer(nak_frames={1, 2})
    port = open_port(url, 9600, 5.0)
    try:
        AstmSender(port, timeout_s=5.0).send(records)
    finally:
        port.close()
    thread.join(timeout=20)
    assert peer.error is None and peer.records() == records
    assert peer.events.count("NAK 1") == 1 and peer.events.count("NAK 2") == 1


def test_busy_lis_nak_to_enq_then_accepts(tmp_path):
    records = _records(tmp_path)
    url, peer, thread = tcp_astm_peer(enq_replies=[NAK])
    port = open_port(url, 9600, 5.0)
    try:
        AstmSender(port, timeout_s=5.0, busy_wait_s=0.05).send(records)
    finally:
        port.close()
    thread.join(timeout=20)
    assert peer.error is None and peer.records() == records
    assert peer.events[:3] == ["ENQ", "EOT", "ENQ"]


def test_contention_instrument_retries_enq(tmp_path):
    records = _records(tmp_path)
    url, peer, thread = tcp_astm_peer(enq_replies=[ENQ])
    port = open_port(url, 9600, 5.0)
    try:
        AstmSender(port, timeout_s=5.0, contention_wait_s=0.05).send(records)
    finally:
        port.close()
    thread.join(timeout=20)
    assert peer.error is None and peer.records() == records
    assert peer.events[:2] == ["ENQ", "ENQ"]


def test_silent_lis_times_out_with_eot_and_transient_error(tmp_path):
    url, peer, _ = tcp_astm_peer(silent=True)
    port = open_port(url, 9600, 1.0)
    try:
        with pytest.raises(TransientError, match="did not answer ENQ within 0.5 s"):
            AstmSender(port, timeout_s=0.5).send(_records(tmp_path))
    finally:
        port.close()
    deadline = time.monotonic() + 5
    while "EOT" not in peer.events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peer.events[:2] == ["ENQ", "EOT"]  # the line is left idle


def test_frame_naked_too_often_aborts(tmp_path):
    url, peer, thread = tcp_astm_peer(nak_frames={1, 2, 3})
    port = open_port(url, 9600, 5.0)
    try:
        with pytest.raises(TransientError, match=r"refused frame 1/\d+ \(FN 1\) 3 times"):
            AstmSender(port, timeout_s=5.0, max_frame_retries=2).send(_records(tmp_path))
    finally:
        port.close()
    thread.join(timeout=20)
    assert peer.events[-1] == "EOT"
    assert [fn for fn, *_ in peer.frames] == [b"1", b"1", b"1"]


def test_missing_serial_port_is_a_clear_transient_error():
    with pytest.raises(TransientError, match="does not exist: check the cable"):
        open_port("/dev/ttyWBC-NOT-THERE", 9600, 1.0)
    with pytest.raises(PermanentError, match="not usable"):
        open_port("bogus://x", 9600, 1.0)


def test_loop_url_opens_and_echo_is_seen_as_contention(tmp_path):
    """loop:// echoes our own ENQ back: with one port the sender sees contention,
    retries, and finally gives up with a transient error instead of hanging."""
    port = open_port("loop://", 9600, 1.0)
    assert isinstance(port, serial.SerialBase)
    try:
        with pytest.raises(TransientError, match="ENQ refused 2 times"):
            AstmSender(port, timeout_s=0.5, contention_wait_s=0.01, max_establish_tries=2).send(["H|\\^&"])
    finally:
        port.close()

