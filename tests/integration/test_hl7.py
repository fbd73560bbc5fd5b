"""HL7 v2.5.1 ORU^R01: parsed and validated by hl7apy (strict) and parsed by
python-hl7; MLLP delivery to a real socket listener with AA / AE / AR /
silence / wrong ACK / dropped connection."""

from __future__ import annotations

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from edge_app.lis.hl7_oru import build_oru, control_id  # noqa: E402
from edge_app.lis.mllp import MllpClient, check_ack, parse_hostport  # noqa: E402
from edge_app.store.db import Store  # noqa: E402
from edge_app.sync.errors import PermanentError, TransientError  # noqa: E402
from edge_app.sync.outbox import Outbox  # noqa: E402
from edge_app.sync.payload import ResultPayload  # noqa: E402
from tests.sync_fixtures import finalised_session, free_port, mllp_peers  # noqa: E402

LOINC = ["770-8", "736-9", "5905-5", "713-8", "706-2"]


@pytest.fixture
def mllp_peer():
    yield from mllp_peers()


def _result(tmp_path, **kw):
    store = Store(tmp_path / "data")
    finalised_session(store, **kw)
    e = Outbox(store).due()[0]
    return ResultPayload.parse(e.result_id, e.payload)


def test_oru_validates_strictly_with_hl7apy(tmp_path):
    result = _result(tmp_path)
    msg = build_oru(result)
    m = parse_message(msg, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert m.validate() is True
    assert m.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and m.msh.msh_12.to_er7() == "2.5.1"
    order = m.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    obx = [o.OBX for o in order.ORU_R01_OBSERVATION]
    assert [o.obx_3.obx_3_1.to_er7() for o in obx] == LOINC
    assert [o.obx_3.obx_3_3.to_er7() for o in obx] == ["LN"] * 5
    assert [o.obx_6.obx_6_1.to_er7() for o in obx] == ["%"] * 5
    assert [float(o.obx_5.to_er7()) for o in obx] == [58.0, 30.0, 7.0, 4.0, 1.0]


def test_hl7apy_strict_does_reject_a_broken_message(tmp_path):
    """The check above can fail: an ORU without its OBR is refused."""
    msg = build_oru(_result(tmp_path))
    broken = "\r".join(s for s in msg.split("\r") if not s.startswith("OBR"))
    with pytest.raises(Exception):  # noqa: B017  (hl7apy raises several error types)
        m = parse_message(broken, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        m.validate()


def test_oru_parses_with_python_hl7_and_carries_ci_sample_operator(tmp_path):
    result = _result(tmp_path, sample_id="S-77", operator="op.carol")
    h = hl7.parse(build_oru(result))
    assert str(h.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(h.segment("MSH")[10]) == control_id(result.result_id)
    obx = h.segments("OBX")
    assert [str(o[3][0][0]) for o in obx] == LOINC
    assert all(str(o[11]) == "F" and str(o[16]) == "op.carol" and str(o[18]) == "kiosk-7" for o in obx)
    ntes = [str(s[3]) for s in h.segments("NTE")]
    assert len(ntes) == 6 and all("95% CI" in n for n in ntes[1:])
    assert "58 of 100 cells" in ntes[1]
    assert str(h.segment("SPM")[2][0][0][0]) == "S-77"
    assert str(h.segment("OBR")[4][0][0]) == "57023-4"


def test_delimiters_in_values_are_escaped(tmp_path):
    result = _result(tmp_path, sample_id="X|Y^Z&W~V\\U", operator="a\rb")
    msg = build_oru(result)
    m = parse_message(msg, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert m.validate()
    assert len(msg.split("\r")) == 1 + 1 + 1 + 1 + 10 + 1 + 1  # no stray segment breaks
    spm = hl7.parse(msg).segment("SPM")
    assert hl7.parse(msg).unescape(str(spm[2][0][0][0])) == "X|Y^Z&W~V\\U"


# -- MLLP -----------------------------------------------------------------------
def test_mllp_delivers_and_checks_the_ack(tmp_path, mllp_peer):
    result = _result(tmp_path)
    peer = mllp_peer(["AA"])
    host, port = parse_hostport(peer.hostport)
    code = MllpClient(host, port, 5).deliver(build_oru(result), control_id(result.result_id))
    assert code == "AA" and len(peer.messages) == 1
    received = parse_message(peer.messages[0], validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert received.validate()


@pytest.mark.parametrize("answers", [["AE", "AA"], ["AR", "AR", "AA"], ["silent", "AA"], ["close", "AA"],
                                     ["wrong-id", "AA"]])
def test_mllp_retries_nack_timeout_and_dropped_connection(tmp_path, mllp_peer, answers):
    result = _result(tmp_path)
    peer = mllp_peer(answers)
    host, port = parse_hostport(peer.hostport)
    code = MllpClient(host, port, 1.0).deliver(build_oru(result), control_id(result.result_id), retries=3,
                                                 pause_s=0.01)
    assert code == "AA" and len(peer.messages) == len(answers)
    assert len(set(peer.messages)) == 1  # the same message, same control id, each time


def test_mllp_gives_up_ae_as_permanent_ar_as_transient(tmp_path, mllp_peer):
    result = _result(tmp_path)
    msg, ctrl = build_oru(result), control_id(result.result_id)
    ae = mllp_peer(["AE"])
    with pytest.raises(PermanentError, match="after 3 attempts: LIS answered AE: test says AE"):
        MllpClient(*parse_hostport(ae.hostport), 1.0).deliver(msg, ctrl, retries=2, pause_s=0.01)
    ar = mllp_peer(["AR"])
    with pytest.raises(TransientError, match="LIS answered AR"):
        MllpClient(*parse_hostport(ar.hostport), 1.0).deliver(msg, ctrl, retries=1, pause_s=0.01)


def test_mllp_unreachable_is_transient():
    port = free_port()
    with pytest.raises(TransientError, match="did not accept") as info:
        MllpClient("127.0.0.1", port, 1.0).deliver("MSH|^~\\&|x", "c1", retries=0)
    assert info.value.receiver_down


def test_check_ack_and_hostport_parsing():
    ack = "MSH|^~\\&|LIS|LAB|A|B|20250101||ACK|1|P|2.5.1\rMSA|CA|c1\r"
    assert check_ack(ack, "c1") == "CA"
    with pytest.raises(ValueError, match="not an HL7 message"):
        check_ack("garbage", "c1")
    with pytest.raises(ValueError, match="no MSA"):
        check_ack("MSH|^~\\&|LIS\r", "c1")
    assert parse_hostport("lis.example.org:2575") == ("lis.example.org", 2575)
    assert parse_hostport("[::1]:2575") == ("::1", 2575)
    for bad in ("nohost", "host:", "host:99999", ":2575"):
        with pytest.raises(ValueError, match="host:port"):
            parse_hostport(bad)
