"""Amendments through the outbox to real receivers: the Medplum FHIR engine (version-aware update,
exactly once through a lost confirmation) and an MLLP listener (OBX-11 ``C``, a new control id)."""

from __future__ import annotations

import pytest

from edge_app.lis.hl7_oru import control_id
from edge_app.review import sign
from edge_app.review.signoff import amend
from edge_app.store.db import Store
from edge_app.sync.loinc import PERCENT_CODES
from tests.sync_fixtures import (
    IDENT_SYSTEM,
    finalised_session,
    mllp_peers,
    outbox_rows,
    run_cli,
    running_fhir_server,
    summary_line,
    write_config,
    write_token,
)

COUNTS = {"neutrophil": 50, "lymphocyte": 30, "monocyte": 10, "eosinophil": 8, "basophil": 2}


@pytest.fixture
def fhir_server(tmp_path):
    yield from running_fhir_server(tmp_path)


@pytest.fixture
def mllp_peer():
    yield from mllp_peers()


def _sync(tmp_path, url, capsys):
    token = tmp_path / "token"
    if not token.exists():
        write_token(token)
    cfg = write_config(tmp_path / "config.toml", "[sync]\nbase_backoff_s = 0.001\nmax_backoff_s = 0.002\n"
                                                 "[fhir]\ntimeout_s = 60.0\n")
    return run_cli(["sync", "--data-dir", tmp_path / "data", "--config", cfg, "--fhir", url, "--token-file", token],
                   capsys)


def _report(server, rid):
    found = server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid}")
    assert len(found) == 1, len(found)
    return found[0]


@pytest.mark.slow
def test_amendment_survives_a_lost_confirmation_and_is_applied_once(tmp_path, fhir_server, capsys):
    store = Store(tmp_path / "data")
    sid, rid = finalised_session(store, counts=COUNTS, signed_by=None)
    sign(store, sid, "dr.first")
    rc, out, err = _sync(tmp_path, fhir_server.url, capsys)
    assert rc == 0 and summary_line(out)["delivered"] == 1, err
    first = _report(fhir_server, rid)
    assert first["status"] == "final" and first["meta"]["tag"][0]["code"] == "1"

    cell = store.conn.execute("SELECT id FROM cells WHERE session_id=? AND label='neutrophil' LIMIT 1",
                              (sid,)).fetchone()[0]
    payload = amend(store, sid, "dr.second", "a neutrophil was a monocyte", {cell: "monocyte"})
    assert payload["percent"]["monocyte"] == 11.0 and payload["percent"]["neutrophil"] == 49.0

    # The server stores the amendment's transaction and dies before it answers.
    fhir_server.restart(WBC_FHIR_CRASH_AFTER=1)
    rc, out, err = _sync(tmp_path, fhir_server.url, capsys)
    assert rc == 1 and summary_line(out) == {"delivered": 0, "pending": 1, "failed": 0}
    assert fhir_server.proc.wait(timeout=10) == 3
    fhir_server.start()
    stored = _report(fhir_server, rid)
    assert stored["id"] == first["id"] and stored["status"] == "amended"
    assert stored["meta"]["versionId"] != first["meta"]["versionId"]
    assert stored["resultsInterpreter"] == [{"display": "dr.second"}]

    # The retry finds version 2 on the server and sends nothing more.
    rc, out, err = _sync(tmp_path, fhir_server.url, capsys)
    assert rc == 0 and summary_line(out) == {"delivered": 1, "pending": 0, "failed": 0}, err
    again = _report(fhir_server, rid)
    assert again["meta"]["versionId"] == stored["meta"]["versionId"]
    receipt = store.conn.execute("SELECT detail FROM events WHERE kind='delivered' ORDER BY id DESC").fetchone()[0]
    assert "already there" in receipt
    for cls, (code, _) in PERCENT_CODES.items():
        obs = fhir_server.search("Observation", identifier=f"{IDENT_SYSTEM}|{rid}-{code}")
        assert len(obs) == 1 and obs[0]["status"] == "amended"
        assert obs[0]["valueQuantity"]["value"] == payload["percent"][cls]
    assert len(fhir_server.search("DiagnosticReport")) == 1


@pytest.mark.slow
def test_hl7_amendment_is_a_correction_with_its_own_control_id(tmp_path, mllp_peer, capsys):
    store = Store(tmp_path / "data")
    sid, rid = finalised_session(store, counts=COUNTS, signed_by=None)
    sign(store, sid, "dr.first")
    peer = mllp_peer()
    rc, out, err = run_cli(["lis", "send", sid, "--data-dir", tmp_path / "data", "--hl7", peer.hostport], capsys)
    assert rc == 0, err
    cell = store.conn.execute("SELECT id FROM cells WHERE session_id=? AND label='lymphocyte' LIMIT 1",
                              (sid,)).fetchone()[0]
    amend(store, sid, "dr.second", "a lymphocyte was a basophil", {cell: "basophil"})
    assert outbox_rows(store, "hl7")[0]["status"] == "pending"  # the amendment is due to the LIS too
    rc, out, err = run_cli(["lis", "send", sid, "--data-dir", tmp_path / "data", "--hl7", peer.hostport], capsys)
    assert rc == 0, err
    first, second = ([s.split("|") for s in m.split("\r") if s] for m in peer.messages)
    assert first[0][9] == control_id(rid) and second[0][9] == control_id(rid, 2)
    assert [s[11] for s in first if s[0] == "OBX"] == ["F"] * 5
    assert [s[11] for s in second if s[0] == "OBX"] == ["C"] * 5
    assert [s[5] for s in second if s[0] == "OBX"] == ["50.0", "29.0", "10.0", "8.0", "3.0"]
    assert "corrected: a lymphocyte was a basophil" in next(s for s in second if s[0] == "NTE")[3]
