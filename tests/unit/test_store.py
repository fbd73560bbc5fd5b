"""The store writer thread on a real SQLite file: order, durability hand-back, crops, failures."""

from __future__ import annotations

import cv2
import numpy as np

from edge_app.store import Store  # noqa: E402
from edge_app.store.writer import StoreWriter  # noqa: E402
from edge_app.store.writes import CellWrite, ManualCellWrite, ReclassifyWrite, UndoWrite


def drain(writer, n, timeout=10.0):
    import time
    out, end = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        out += writer.done()
        time.sleep(0.01)
    return out


def test_cells_committed_in_order_and_reported_after_commit(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100)
    w = StoreWriter(store, crop_size=48)
    w.start()
    crop = np.zeros((90, 90, 3), np.uint8)
    crop[20:70, 20:70] = (150, 40, 160)
    for i in range(5):
        w.submit(CellWrite(sid, "neutrophil", probs={"neutrophil": 0.9}, confidence=0.9, box=[1, 2, 3, 4],
                           slide_xy=(10.0 * i, 0.0), frame_index=i, track_id=i, crop_rgb=crop), f"t{i}")
    done = drain(w, 5)
    w.close()
    assert [d.tag for d in done] == [f"t{i}" for i in range(5)]
    # each report carries its write, named fields and all, without the crop it no longer needs to hold
    assert all(d.kind == "cell" and d.write.label == "neutrophil" and d.write.crop_rgb is None for d in done)
    assert [d.write.frame_index for d in done] == list(range(5))
    # Every reported cell is on disk, visible to a fresh connection.
    with Store(tmp_path) as other:
        rows = other.cells(sid)
    assert [r["id"] for r in rows] == [d.value for d in done]
    jpeg = cv2.imdecode(np.frombuffer(rows[0]["crop"], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (48, 48, 3)
    assert rows[2]["slide_x"] == 20.0 and rows[2]["frame_index"] == 2


def test_corrections_through_the_writer_record_who_when_from_to(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100)
    w = StoreWriter(store)
    w.start()
    w.submit(CellWrite(sid, "monocyte", confidence=0.4, flagged=True))
    cell_id = drain(w, 1)[0].value
    w.submit(ReclassifyWrite(sid, cell_id, "lymphocyte", operator="tech-a"))
    w.submit(ManualCellWrite(sid, "basophil", operator="tech-a"))
    w.submit(UndoWrite(sid, operator="tech-b"))
    done = drain(w, 3)
    w.close()
    assert [d.kind for d in done] == ["reclassify", "manual", "undo"]
    assert done[2].value["action"] == "add"  # the undo took back the hand-added cell
    corr = [dict(c) for c in Store(tmp_path).corrections(sid)]
    assert [(c["action"], c["from_label"], c["to_label"], c["operator"]) for c in corr] == [
        ("reclassify", "monocyte", "lymphocyte", "tech-a"), ("add", None, "basophil", "tech-a"),
        ("undo", "basophil", None, "tech-b")]
    assert all(c["at"] for c in corr)
    labels = Store(tmp_path).label_counts(sid)
    assert labels == {"lymphocyte": 1}


def test_write_failure_is_reported_not_swallowed(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100)
    w = StoreWriter(store)
    w.start()
    w.submit(CellWrite("no-such-session", "neutrophil"))  # foreign key violation
    done = drain(w, 1)
    w.close()
    assert done[0].kind == "error" and "database write failed" in w.error
    assert store.cells(sid) == []


def test_an_unencodable_crop_still_counts_the_cell(tmp_path):
    store = Store(tmp_path)
    sid = store.open_session(target=100)
    w = StoreWriter(store)
    w.start()
    bad = np.zeros((4, 4, 7), np.uint8)  # seven channels: OpenCV cannot convert it to BGR
    w.submit(CellWrite(sid, "neutrophil", confidence=0.9, crop_rgb=bad))
    done = drain(w, 1)
    w.close()
    assert done[0].kind == "cell" and w.error is None
    (row,) = store.cells(sid)
    assert row["label"] == "neutrophil" and row["crop"] is None


def test_an_unexpected_write_error_stops_counting_visibly(tmp_path):
    store = Store(tmp_path)
    store.open_session(target=100)
    w = StoreWriter(store)
    w.start()
    w.submit(object())  # a programming error (not a write): ValueError in the writer thread
    done = drain(w, 1)
    w.close()
    assert done[0].kind == "error" and "ValueError" in w.error and not w.is_alive()


def test_writes_still_pending_at_close_are_an_error(tmp_path):
    import threading

    store = Store(tmp_path)
    sid = store.open_session(target=100)
    w = StoreWriter(store)
    gate = threading.Event()
    real = w._apply
    w._apply = lambda write: (gate.wait(5), real(write))[1]  # a disk that hangs
    w.start()
    w.submit(CellWrite(sid, "neutrophil", confidence=0.9))
    w.close(timeout=0.2)
    assert w.error and "still pending" in w.error  # so the runner leaves the session open
    gate.set()
    w.join(5)
    assert len(store.cells(sid)) == 1  # the write itself was not lost
