"""Review and sign-off on a real SQLite store: audit trail, frozen versions, amendments,
verified cells, and what sync / lis / FHIR / HL7 / ASTM make of signed and unsigned results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_app.labels import CLASSES, FIVE_PART
from edge_app.lis.astm_e1394 import build_records
from edge_app.lis.hl7_oru import build_oru, control_id
from edge_app.review import AlreadySigned, ReviewModel, reopen, sign
from edge_app.review.signoff import amend, describe
from edge_app.store import review as store_review
from edge_app.store.db import Store, utcnow
from edge_app.store.review import ReviewError
from edge_app.sync.fhir_bundle import build_bundle
from edge_app.sync.outbox import Outbox
from edge_app.sync.payload import ResultPayload
from tests.sync_fixtures import IDENT_SYSTEM, finalised_session, free_port, outbox_rows, run_cli, summary_line

COUNTS = {"neutrophil": 6, "lymphocyte": 3, "monocyte": 1, "eosinophil": 0, "basophil": 0}


def _count(store, **kw):
    """A real, unsigned count of 10 cells with crops; returns (session id, result id, cell ids by label)."""
    sid, rid = finalised_session(store, counts=COUNTS, crops=10, signed_by=None, **kw)
    by = {}
    for c in store.cells(sid):
        by.setdefault(c["label"], []).append(c["id"])
    return sid, rid, by


def _rows(store, sid):
    return [dict(r) for r in store_review.reviews(store, sid)]


def test_every_change_and_confirmation_is_audited(tmp_path):
    store = Store(tmp_path)
    sid, _, by = _count(store)
    n0 = by["neutrophil"][0]
    store_review.set_label(store, sid, n0, "lymphocyte", "dr.a", "review")
    store_review.confirm(store, sid, by["lymphocyte"], "dr.b", "remote")
    store_review.set_label(store, sid, by["monocyte"][0], "x", "dr.a", "review")
    rows = _rows(store, sid)
    assert [(r["cell_id"], r["from_label"], r["to_label"], r["user"], r["source"], r["version"]) for r in rows] == [
        (n0, "neutrophil", "lymphocyte", "dr.a", "review", 1),
        *[(c, "lymphocyte", "lymphocyte", "dr.b", "remote", 1) for c in by["lymphocyte"]],
        (by["monocyte"][0], "monocyte", "x", "dr.a", "review", 1)]
    assert all(r["at"] <= utcnow() for r in rows)
    # "not a leukocyte" leaves the count (not even "other"); the cell stays, for learning from it
    assert store.label_counts(sid) == {"neutrophil": 5, "lymphocyte": 4}
    assert len(store.cells(sid)) == 9 and len(store.cells(sid, include_rejected=True)) == 10
    with pytest.raises(ReviewError, match="unknown class"):
        store_review.set_label(store, sid, n0, "blast", "dr.a", "review")
    with pytest.raises(ReviewError, match="named user"):
        store_review.set_label(store, sid, n0, "other", " ", "review")
    with pytest.raises(ReviewError, match="not a counted cell"):
        store_review.set_label(store, sid, 999999, "other", "dr.a", "review")


def test_kiosk_corrections_are_in_the_same_audit_trail(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100, operator="tech.t")
    cell = store.add_cell(sid, label="neutrophil", confidence=0.5)
    store.reclassify(sid, cell, "monocyte", "tech.t")
    store.undo(sid, "tech.t")
    manual = store.add_manual_cell(sid, "basophil", None)
    rows = _rows(store, sid)
    assert [(r["cell_id"], r["from_label"], r["to_label"], r["user"], r["source"], r["reason"]) for r in rows] == [
        (cell, "neutrophil", "monocyte", "tech.t", "kiosk", None),
        (cell, "monocyte", "neutrophil", "tech.t", "kiosk", "undo"),
        (manual, None, "basophil", "kiosk", "kiosk", None)]


def test_gallery_groups_and_live_differential(tmp_path):
    store = Store(tmp_path)
    sid, _, by = _count(store)
    store.conn.execute("UPDATE cells SET confidence=0.3 WHERE id=?", (by["neutrophil"][3],))
    m = ReviewModel(store, sid)
    assert [g for g, _ in m.groups()] == [*CLASSES, "x"]
    neut = m.group("neutrophil")
    assert neut[0].cell_id == by["neutrophil"][3] and len(neut) == 6  # least confident first
    assert m.summary()["differential"]["neutrophil"]["percent"] == 60.0
    for c in by["neutrophil"][:2]:
        store_review.set_label(store, sid, c, "eosinophil", "dr.a", "review")
    store_review.set_label(store, sid, by["lymphocyte"][0], "x", "dr.a", "review")
    s = ReviewModel(store, sid).summary()
    # 4 N, 2 L, 1 M, 2 E of 9 five-part cells; Wilson interval from edge_app.counting.tally
    assert s["total"] == 9 and s["differential"]["neutrophil"]["percent"] == 44.4
    assert s["differential"]["eosinophil"]["count"] == 2 and s["counts"]["x"] == 1
    assert s["differential"]["neutrophil"]["ci95"] == [18.9, 73.3]
    assert s["reviewed"] == 3 and s["cells"] == 10


def test_sign_freezes_and_an_amendment_is_a_new_version(tmp_path):
    store = Store(tmp_path)
    sid, rid, by = _count(store)
    store_review.set_label(store, sid, by["neutrophil"][0], "lymphocyte", "dr.a", "review")
    p1 = sign(store, sid, "dr.a")
    assert p1["version"] == 1 and p1["signed_by"] == "dr.a" and p1["amended"] is False
    assert p1["counts"] == {"neutrophil": 5, "lymphocyte": 4, "monocyte": 1, "eosinophil": 0, "basophil": 0}
    assert p1["percent"]["lymphocyte"] == 40.0 and p1["corrections"] == 1
    assert store.result(sid) == p1  # the signed result is what the outbox sends
    assert p1["finalised_at"] == "2025-03-04T09:15:30.250+00:00" and p1["frames"] == 812  # kept as counted

    with pytest.raises(ReviewError, match="frozen"):
        store_review.set_label(store, sid, by["neutrophil"][1], "other", "dr.a", "review")
    with pytest.raises(ReviewError, match="frozen"):
        store_review.confirm(store, sid, by["neutrophil"][1:2], "dr.a", "review")
    with pytest.raises(AlreadySigned):
        sign(store, sid, "dr.b")
    with pytest.raises(ReviewError, match="reason"):
        reopen(store, sid, "dr.b", "  ")

    Outbox(store).mark_done(outbox_rows(store)[0]["id"])
    p2 = amend(store, sid, "dr.b", "lymphocyte was a monocyte", {by["neutrophil"][0]: "monocyte"})
    assert p2["version"] == 2 and p2["amended"] is True and p2["signed_by"] == "dr.b"
    assert p2["amendment_reason"] == "lymphocyte was a monocyte"
    assert p2["counts"]["monocyte"] == 2 and p2["counts"]["lymphocyte"] == 3
    versions = store_review.versions(store, sid)
    assert [(v["version"], v["signed_by"], v["reason"]) for v in versions] == [
        (1, "dr.a", None), (2, "dr.b", "lymphocyte was a monocyte")]
    assert json.loads(versions[0]["payload"]) == p1  # version 1 is kept as it was signed
    # The delivered entry is due again, for the amendment
    row = outbox_rows(store)[0]
    assert row["status"] == "pending" and row["attempts"] == 0 and row["done_at"] is None
    assert _rows(store, sid)[-1]["version"] == 2
    lines = describe(store, sid)
    assert lines[0].startswith("sign-off: version 1, 1 cell changed, signed by dr.a")
    assert "amendment: version 2 re-opened by dr.b" in lines[1] and "lymphocyte was a monocyte" in lines[1]
    assert "signed by dr.b" in lines[1]


def test_sign_needs_a_result(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100)
    store.add_cell(sid, label="neutrophil", confidence=0.9)
    with pytest.raises(ReviewError, match="no result yet"):
        sign(store, sid, "dr.a")


def test_verified_cells_for_site_adaptation(tmp_path):
    store = Store(tmp_path)
    sid, _, by = _count(store)
    other_sid, _, other_by = _count(store, sample_id="S-2")
    store_review.set_label(store, sid, by["neutrophil"][0], "monocyte", "dr.a", "review")
    store_review.confirm(store, sid, by["lymphocyte"][:1], "dr.a", "review")
    mark = store_review.reviews(store, sid)[-1]["at"]
    while utcnow() <= mark:  # times are kept to the millisecond: the next verdict must be later than the mark
        time.sleep(0.001)
    store_review.set_label(store, other_sid, other_by["monocyte"][0], "x", "dr.c", "remote")
    got = store.verified_cells()
    assert [(v.cell_id, v.session_id, v.label, v.model_label, v.user, v.source) for v in got] == [
        (by["neutrophil"][0], sid, "monocyte", "neutrophil", "dr.a", "review"),
        (by["lymphocyte"][0], sid, "lymphocyte", "lymphocyte", "dr.a", "review"),
        (other_by["monocyte"][0], other_sid, "x", "monocyte", "dr.c", "remote")]
    crop = store.conn.execute("SELECT crop FROM cells WHERE id=?", (by["neutrophil"][0],)).fetchone()[0]
    assert got[0].crop_jpeg == bytes(crop) and got[0].crop_jpeg.startswith(b"\xff\xd8")
    assert [v.cell_id for v in store.verified_cells(since=mark)] == [other_by["monocyte"][0]]
    sign(store, sid, "dr.a")
    assert {v.session_id for v in store.verified_cells(signed_only=True)} == {sid}
    # the latest verdict wins: one row per cell
    store_review.reopen(store, sid, "dr.a", "second look")
    store_review.set_label(store, sid, by["neutrophil"][0], "neutrophil", "dr.b", "review")
    first = [v for v in store.verified_cells() if v.cell_id == by["neutrophil"][0]]
    assert len(first) == 1 and first[0].label == "neutrophil" and first[0].user == "dr.b"


def _result(store, sid) -> ResultPayload:
    row = store.conn.execute("SELECT result_id, payload FROM results WHERE session_id=?", (sid,)).fetchone()
    return ResultPayload.parse(row[0], json.loads(row[1]))


def test_messages_say_preliminary_final_and_corrected(tmp_path):
    store = Store(tmp_path)
    sid, rid, by = _count(store, operator="op.o")
    unsigned = _result(store, sid)
    report = build_bundle(unsigned, IDENT_SYSTEM)["entry"][-1]["resource"]
    assert report["status"] == "preliminary" and "resultsInterpreter" not in report
    assert "|P|" in build_oru(unsigned).split("\r")[4]

    sign(store, sid, "Dr Final")
    final = _result(store, sid)
    bundle = build_bundle(final, IDENT_SYSTEM)
    report = bundle["entry"][-1]["resource"]
    assert report["status"] == "final" and report["resultsInterpreter"] == [{"display": "Dr Final"}]
    assert {e["resource"]["status"] for e in bundle["entry"]} == {"final"}
    obx = [s.split("|") for s in build_oru(final).split("\r") if s.startswith("OBX")]
    assert [o[11] for o in obx] == ["F"] * 5
    assert "signed by Dr Final" in build_oru(final)

    amend(store, sid, "Dr Second", "one monocyte was a lymphocyte", {by["monocyte"][0]: "lymphocyte"})
    amended = _result(store, sid)
    bundle = build_bundle(amended, IDENT_SYSTEM)
    assert {e["resource"]["status"] for e in bundle["entry"]} == {"amended"}
    assert bundle["entry"][-1]["resource"]["meta"]["tag"][0]["code"] == "2"
    msg = build_oru(amended)
    segs = [s.split("|") for s in msg.split("\r") if s]
    assert [s[11] for s in segs if s[0] == "OBX"] == ["C"] * 5
    assert next(s for s in segs if s[0] == "OBR")[25] == "C"
    assert segs[0][9] == control_id(rid, 2) != control_id(rid) and len(segs[0][9]) <= 20
    records = build_records(amended, utcnow())
    o = next(r.split("|") for r in records if r.startswith("O|"))
    assert o[25] == "C"
    assert [r.split("|")[8] for r in records if r.startswith("R|")] == ["C"] * 5
    assert records[0].split("|")[2] == f"{rid}-v2"
    assert amended.percent["lymphocyte"] == 40.0 and amended.percent["monocyte"] == 0.0


def _config(tmp_path, text: str):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_sync_holds_unsigned_results_and_says_so(tmp_path, capsys):
    store = Store(tmp_path / "data")
    unsigned, _, _ = _count(store)
    dead = f"http://127.0.0.1:{free_port()}/fhir/R4"
    cfg = _config(tmp_path, "[sync]\nbase_backoff_s = 60.0\n")
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--config", cfg, "--fhir", dead], capsys)
    assert rc == 0 and summary_line(out) == {"delivered": 0, "pending": 1, "failed": 0}
    assert "1 result(s) not sent: not signed off yet" in err and "wbc-counter sign SESSION --user NAME" in err
    assert outbox_rows(store)[0]["attempts"] == 0  # not even tried
    assert Outbox(store).next_due_at(signed_only=True) is None

    # Off: the unsigned result is sent (as preliminary), so the unreachable server is tried
    cfg = _config(tmp_path, "[sync]\nbase_backoff_s = 60.0\n[delivery]\nrequire_signoff = false\n")
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--config", cfg, "--fhir", dead], capsys)
    assert rc == 1 and "cannot reach" in err and outbox_rows(store)[0]["attempts"] == 1


def test_lis_send_refuses_an_unsigned_result(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _, _ = _count(store)
    rc, out, err = run_cli(["lis", "send", sid, "--data-dir", tmp_path / "data", "--hl7", "127.0.0.1:9"], capsys)
    assert rc == 1 and "not signed off, so it is not sent" in err and f"wbc-counter sign {sid[:8]}" in err
    assert outbox_rows(store, "hl7") == []


def test_sign_and_report_verbs(tmp_path, capsys):
    store = Store(tmp_path / "data")
    sid, _, by = _count(store)
    store_review.set_label(store, sid, by["neutrophil"][0], "basophil", "dr.a", "review")
    rc, out, err = run_cli(["report", sid[:8], "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0 and "sign-off: not signed" in out
    rc, out, err = run_cli(["sign", sid[:8], "--user", "Dr Sign", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0, err
    line = json.loads(out)
    assert line == {"session": sid, "version": 1, "signed_by": "Dr Sign", "signed_at": line["signed_at"],
                    "amended": False}
    rc, out, err = run_cli(["sign", sid, "--user", "Dr Sign", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0 and "signed already" in err and out == ""
    reopen(store, sid, "Dr Two", "basophil was a neutrophil")
    store_review.set_label(store, sid, by["neutrophil"][0], "neutrophil", "Dr Two", "review")
    rc, out, err = run_cli(["sign", sid, "--user", "Dr Two", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0 and json.loads(out)["version"] == 2 and json.loads(out)["amended"] is True
    rc, out, err = run_cli(["report", sid, "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0
    assert "sign-off: version 1, 1 cell changed, signed by Dr Sign" in out
    assert "amendment: version 2 re-opened by Dr Two" in out and "basophil was a neutrophil" in out
    assert "neutrophil      6" in out  # the report's differential is the amended one
    # the written pages carry the sign-off too (a printed or forwarded page shows who signed)
    page = next(ln.split("report: ", 1)[1] for ln in out.splitlines() if ln.endswith(".html"))
    html_text = Path(page).read_text()
    signoff = html_text.split('<ul id="signoff">', 1)[1].split("</ul>", 1)[0]
    assert "signed by Dr Sign" in signoff and "re-opened by Dr Two" in signoff and "signed by Dr Two" in signoff
    rc, out, err = run_cli(["sign", "ffffffff", "--user", "x", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 2 and "no session" in err and "Traceback" not in err


def test_five_part_order_is_the_key_order():
    from edge_app.review.model import KEYS
    assert [KEYS[str(i)] for i in range(1, 7)] == list(CLASSES) and KEYS["x"] == "x"
    assert list(FIVE_PART) == list(CLASSES[:5])


def test_an_incomplete_count_is_signed_only_knowingly(tmp_path):
    store = Store(tmp_path)
    if "state" not in {r[1] for r in store.conn.execute("PRAGMA table_info(results)")}:
        pytest.skip("results.state (migration 0003) is not in this tree")
    sid, _, _ = _count(store)
    store.conn.execute("UPDATE results SET state='incomplete', reason='the video ended early' WHERE session_id=?",
                       (sid,))
    with pytest.raises(ReviewError, match="INCOMPLETE count .the video ended early"):
        sign(store, sid, "dr.a")
    assert not store_review.state(store, sid).signed
    p = sign(store, sid, "dr.a", incomplete_ok=True)
    assert p["signed_incomplete"] is True and p["signed_by"] == "dr.a"
    store.conn.execute("UPDATE results SET state='no-result' WHERE session_id=?", (sid,))
    reopen(store, sid, "dr.a", "recount")
    with pytest.raises(ReviewError, match="no result to sign"):
        sign(store, sid, "dr.a", incomplete_ok=True)
