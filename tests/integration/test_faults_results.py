"""Faults and bad input: a result says what it is, one counter per data dir, memory stays bounded.

Real files (a copy of samples/slide_pan_train.mp4 with garbage written into its middle, an MJPEG
AVI written from the sample's own frames and cut at 60%, a real 40000x40000 PNG, corrupt images),
real subprocesses of the console entry point, the real SQLite store and the Medplum FHIR engine:
a 0-cell run and a mid-file-corrupt video are finalised as what they are and never delivered as
final; a second counter on a busy data dir is refused and the first's result is untouched.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.capture import open_source
from edge_app.capture.sources import VideoFileSource
from edge_app.config import ConfigError, load_config
from edge_app.counting.tracker import Track
from edge_app.imaging import framing, imagesize
from edge_app.session.pipeline import kept_crop
from edge_app.session.report import session_result, text_summary
from edge_app.session.runlock import CounterBusy, RunLock
from edge_app.session.runner import LiveRun
from edge_app.store import Store, StoreError
from edge_app.sync.errors import PermanentError
from edge_app.sync.payload import ResultPayload
from tests.kiosk_fixtures import ROOT, SAMPLE_VIDEO, FakeBundle, requires_model, requires_sample
from tests.sync_fixtures import (
    IDENT_SYSTEM,
    finalised_session,
    outbox_rows,
    run_cli,
    running_fhir_server,
    summary_line,
    write_config,
    write_token,
)

FRAMES = sorted((ROOT / "calibration" / "frames").glob("bccd_*.jpg"))


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_app", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def one_clear_line(r) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


# -- real damaged files ------------------------------------------------------------
def corrupt_copy(folder: Path, nbytes: int = 200_000) -> Path:
    """The sample video with ``nbytes`` of (seeded) garbage written over its middle."""
    data = bytearray(SAMPLE_VIDEO.read_bytes())
    mid = len(data) // 2
    data[mid:mid + nbytes] = np.random.default_rng(34).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    out = folder / "corrupt.mp4"
    out.write_bytes(bytes(data))
    return out


def truncated_mjpeg(folder: Path, frames: int = 120, keep: float = 0.6) -> Path:
    """An MJPEG AVI of the sample's first ``frames`` frames, cut at ``keep`` of its bytes."""
    full = folder / "full.avi"
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for _ in range(frames):
        ok, bgr = cap.read()
        assert ok
        writer.write(bgr)
    writer.release()
    cap.release()
    data = full.read_bytes()
    out = folder / "cut.avi"
    out.write_bytes(data[:int(len(data) * keep)])
    return out


def png_bomb(path: Path, side: int = 40000) -> Path:
    """A valid 1-bit grey PNG of side x side pixels: a few hundred KB that decode to gigabytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def background_patch(folder: Path, n: int = 4) -> Path:
    """A folder of 640x480 images of real slide background (plasma, no leukocyte): a patch of a
    real frame where the shipped detector finds nothing, scaled up."""
    img = cv2.imread(str(ROOT / "calibration" / "frames" / "bccd_BloodImage_00132.jpg"))
    patch = img[147:243, 415:511]
    out = folder / "blank"
    out.mkdir()
    for i in range(n):
        cv2.imwrite(str(out / f"blank_{i}.png"), cv2.resize(np.roll(patch, 7 * i, axis=1), (640, 480)))
    return out


def read_all(source) -> int:
    source.open()
    n = 0
    while source.read() is not None:
        n += 1
    source.close()
    return n


@requires_sample
def test_garbage_mid_file_is_a_shortfall_not_the_end(tmp_path):
    src = VideoFileSource(str(corrupt_copy(tmp_path)))
    n = read_all(src)
    assert src.declared == 1228 and n < 1228
    assert f"past frame {n} of the 1228" in src.shortfall()
    intact = VideoFileSource(str(SAMPLE_VIDEO))
    assert read_all(intact) == 1228 and intact.shortfall() is None


@requires_sample
def test_truncated_mjpeg_avi_is_a_shortfall(tmp_path):
    src = VideoFileSource(str(truncated_mjpeg(tmp_path)))
    n = read_all(src)
    assert src.declared == 120 and n < 80
    assert "damaged or truncated" in src.shortfall()
    whole = VideoFileSource(str(tmp_path / "full.avi"))
    assert read_all(whole) == 120 and whole.shortfall() is None


def test_folder_with_unreadable_images_is_short(tmp_path):
    (tmp_path / "a.jpg").write_bytes(FRAMES[0].read_bytes())
    (tmp_path / "b.jpg").write_bytes(FRAMES[1].read_bytes()[:300])  # truncated JPEG
    png_bomb(tmp_path / "c.png", side=20000)  # 400 megapixels: refused from its header
    src = open_source(str(tmp_path))
    assert read_all(src) == 1 and src.shortfall() == f"2 of 3 images in {tmp_path.name} could not be read"


@requires_sample
def test_replay_of_a_damaged_file_is_not_looped_over(tmp_path):
    src = open_source(f"replay://{corrupt_copy(tmp_path)}?fps=1000&loop=1")
    n = read_all(src)
    assert 0 < n < 1228 and src.shortfall()


@requires_sample
def test_a_looped_replay_numbers_its_frames_on(tmp_path):
    """A camera's frame numbers never start again; the tracker ages tracks by them (a replay whose
    numbers restarted at 0 on every loop kept every earlier loop's tracks alive: memory and fps)."""
    truncated_mjpeg(tmp_path)  # writes full.avi: 120 real frames
    src = open_source(f"replay://{tmp_path / 'full.avi'}?fps=1000&loop=1")
    src.open()
    indices = [src.read().index for _ in range(400)]
    src.close()
    assert all(b > a for a, b in zip(indices, indices[1:])) and indices[-1] >= 300


@pytest.mark.parametrize("query,message", [
    ("fps=-5", "fps='-5' is not a frame rate"),
    ("fps=abc", "fps='abc' is not a frame rate"),
    ("fps=inf", "fps='inf' is not a frame rate"),
    ("fps=nan", "fps='nan' is not a frame rate"),
    ("loop=maybe", "loop='maybe'"),
    ("fsp=30", "unknown replay option 'fsp'"),
])
def test_bad_replay_options_are_refused_by_name(tmp_path, query, message):
    r = cli("run", "--source", f"replay://{SAMPLE_VIDEO}?{query}", "--headless", "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1500:]
    one_clear_line(r)
    assert not (tmp_path / "d" / "wbc.sqlite3").exists()  # refused before any session


# -- a result says what it is (in-process loop, the real store) ----------------------------
@requires_sample
def test_a_corrupt_video_is_finalised_incomplete_and_not_sendable(tmp_path):
    store = Store(tmp_path / "d")
    res = LiveRun(cfg=load_config(None), bundle=FakeBundle(), source=open_source(str(corrupt_copy(tmp_path))),
                  store=store, target=1000).run()
    assert res.reason == "source-ended" and res.payload["complete"] is False
    assert res.payload["state"] == "incomplete" and "of the 1228 it declares" in res.payload["reason"]
    assert store.result_state(res.session_id) == ("incomplete", res.payload["reason"])
    # Queued, to wait for a person who signs it knowing it is incomplete; no sender takes it before.
    assert [r["status"] for r in outbox_rows(store)] == ["pending"]
    row, payload, final = session_result(store, res.session_id)
    assert "INCOMPLETE: video corrupt.mp4 could not be read past frame" in text_summary(row, payload, final)
    with pytest.raises(PermanentError, match="INCOMPLETE"):
        ResultPayload.parse("r" * 32, payload)


def test_a_count_of_nothing_is_no_result(tmp_path):
    store = Store(tmp_path / "d")
    res = LiveRun(cfg=load_config(None), bundle=FakeBundle(), source=open_source(str(background_patch(tmp_path))),
                  store=store).run()
    assert res.payload["total"] == 0 and res.payload["state"] == "no-result" and res.payload["complete"] is False
    assert store.result_state(res.session_id)[0] == "no-result" and outbox_rows(store) == []
    with pytest.raises(PermanentError, match="NO RESULT"):
        ResultPayload.parse("r" * 32, res.payload)


def test_finalising_checks_the_session_is_open_and_never_overwrites(tmp_path):
    store = Store(tmp_path / "d")
    sid, rid = finalised_session(store)
    first = store.result(sid)
    with pytest.raises(StoreError, match="no longer open"):
        store.finalise_session(sid, dict(first, total=35))
    assert store.result(sid) == first and len(outbox_rows(store)) == 1
    aborted = store.open_session(target=100, sample_id=None, operator=None, device=None, model_version="m",
                                 backend="b")
    store.abort_session(aborted)
    with pytest.raises(StoreError, match="status 'aborted'"):
        store.finalise_session(aborted, first)
    assert store.result(aborted) is None and store.session(aborted)["status"] == "aborted"


def test_a_payload_without_cells_is_never_final(tmp_path):
    store = Store(tmp_path / "d")
    sid = store.open_session(target=100, sample_id=None, operator=None, device=None, model_version="m", backend="b")
    store.finalise_session(sid, {"total": 0})
    assert store.result_state(sid) == ("no-result", "no leukocyte was counted") and outbox_rows(store) == []


def test_old_payloads_stay_final():
    """Results written before the state existed are complete counts (the FHIR tests' payloads)."""
    store_payload = {"counts": {c: 20 for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")},
                     "percent": {c: 20.0 for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")},
                     "ci95": {c: [12.0, 29.0] for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                                         "basophil")},
                     "total": 100, "finalised_at": "2026-01-01T00:00:00+00:00"}
    assert ResultPayload.parse("r" * 32, store_payload).total == 100
    signed = dict(store_payload, state="incomplete", reason="x", signed_by="dr.a", signed_incomplete=True)
    assert ResultPayload.parse("r" * 32, signed).total == 100  # a person signed it, knowing


# -- config: contradictions and non-finite numbers ---------------------------------------
@pytest.mark.parametrize("text,message", [
    ("[quality]\nmin_brightness = 200\nmax_brightness = 100\n",
     "min_brightness (200) must be below max_brightness (100)"),
    ("[tally]\nwbc_count = inf\n", "'tally.wbc_count': Input should be a finite number"),
    ("[model]\nbox_scale = nan\n", "'model.box_scale': Input should be a finite number"),
    ("[capture]\nreopen_max_backoff_s = inf\n", "'capture.reopen_max_backoff_s': Input should be a finite number"),
])
def test_contradicting_and_non_finite_config_values_are_refused_by_name(tmp_path, text, message):
    cfg = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cfg)
    r = cli("run", "--source", SAMPLE_VIDEO, "--headless", "--config", cfg, "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and message in r.stderr
    one_clear_line(r)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_cli_numbers_are_refused_by_name(tmp_path, value):
    r = cli("run", "--source", SAMPLE_VIDEO, "--headless", f"--wbc-count={value}", "--data-dir", tmp_path)
    assert r.returncode == 2 and "command line: bad value for 'tally.wbc_count'" in r.stderr, r.stderr[-800:]
    one_clear_line(r)


def test_yaml_aliases_are_refused_before_anything_is_built(tmp_path):
    pytest.importorskip("yaml")
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = write_config(tmp_path / "c.yaml", "\n".join(lines) + "\n")  # 9^9 strings once built
    r = cli("status", "--config", bomb, "--data-dir", tmp_path / "d", timeout=120)
    assert r.returncode == 2 and "anchors and aliases" in r.stderr and "line 1" in r.stderr
    one_clear_line(r)
    plain = write_config(tmp_path / "ok.yaml", "tally:\n  target: 50\n")
    assert load_config(plain).tally.target == 50


# -- decode-size cap ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_image_size_is_read_from_the_header(tmp_path):
    img = cv2.imread(str(FRAMES[0]))[:301, :457]
    for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm"):
        ok, buf = cv2.imencode(ext, img)
        assert ok and imagesize.header_size(buf.tobytes()) == (457, 301), ext
        assert imagesize.decode_rgb(buf).shape == (301, 457, 3)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert imagesize.header_size(buf.tobytes()) == (457, 301)


def test_a_decompression_bomb_is_refused_from_its_header(bomb):
    assert bomb.stat().st_size < 2_000_000 and imagesize.header_size(bomb.read_bytes()) == (40000, 40000)
    with pytest.raises(ValueError, match="40000x40000 pixels .* above the 50-megapixel limit"):
        imagesize.decode_rgb(np.fromfile(bomb, np.uint8))


@requires_model
def test_classify_batch_goes_on_past_a_bomb(tmp_path, bomb):
    good = ROOT / "calibration" / "crops" / "pbc_LY_176592.jpg"
    r = cli("classify", "--json", bomb, good, "--data-dir", tmp_path, timeout=300)
    assert r.returncode == 1 and "above the 50-megapixel limit" in r.stderr
    one_clear_line(r)
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert [row["image"] for row in rows] == [str(good)] and rows[0]["no_leukocyte"] is False


# -- an image with no leukocyte ----------------------------------------------------------
@requires_model
def test_classify_says_when_there_is_no_leukocyte(tmp_path):
    frame = cv2.imread(str(ROOT / "calibration" / "frames" / "bccd_BloodImage_00285.jpg"))
    cases = {"blank.png": frame[34:130, 514:610], "black.png": np.zeros((128, 128, 3), np.uint8),
             "one.png": np.full((1, 1, 3), 200, np.uint8)}
    for name, img in cases.items():
        cv2.imwrite(str(tmp_path / name), img)
    cells = sorted((ROOT / "calibration" / "crops").glob("*.jpg"))[::40]
    r = cli("classify", "--json", *(tmp_path / n for n in cases), *cells, "--data-dir", tmp_path / "d", timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    rows = {Path(row["image"]).name: row for row in map(json.loads, r.stdout.splitlines())}
    for name in cases:
        assert rows[name]["no_leukocyte"] is True and rows[name]["no_leukocyte_reason"], rows[name]
        assert {"image", "label", "probs"} <= set(rows[name])  # the contract's keys stay
    assert "too small" in rows["one.png"]["no_leukocyte_reason"]
    assert "too dark" in rows["black.png"]["no_leukocyte_reason"]
    for cell in cells:
        assert rows[cell.name]["no_leukocyte"] is False, rows[cell.name]


def test_no_leukocyte_rule_on_real_images():
    frame = cv2.cvtColor(cv2.imread(str(ROOT / "calibration" / "frames" / "bccd_BloodImage_00285.jpg")),
                         cv2.COLOR_BGR2RGB)
    plasma = cv2.cvtColor(cv2.imread(str(ROOT / "calibration" / "frames" / "bccd_BloodImage_00132.jpg")),
                          cv2.COLOR_BGR2RGB)[147:243, 415:511]
    assert framing.no_leukocyte(plasma, None, None) == "no stained nucleus (only plasma or red cells)"
    assert framing.no_leukocyte(frame[34:130, 514:610], None, False) == "the detector finds no cell near the centre"
    assert "too dark" in framing.no_leukocyte(np.zeros((64, 64, 3), np.uint8))
    assert "too small" in framing.no_leukocyte(np.full((1, 1, 3), 200, np.uint8))
    for crop in sorted((ROOT / "calibration" / "crops").glob("*.jpg"))[::30]:
        rgb = cv2.cvtColor(cv2.imread(str(crop)), cv2.COLOR_BGR2RGB)
        assert framing.no_leukocyte(rgb, None, None) is None, crop.name


# -- one counter per data dir --------------------------------------------------------------
def test_the_run_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(CounterBusy, match="another counter is running on the data dir"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: the next counter gets it
        pass


def test_a_planted_lock_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "run.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="lock file"):
        RunLock(tmp_path).acquire()


@requires_model
@requires_sample
@pytest.mark.slow
def test_a_second_counter_is_refused_and_the_first_result_stays(tmp_path):
    data = tmp_path / "d"
    first = subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--source",
                              f"replay://{SAMPLE_VIDEO}?fps=30", "--headless", "--target", "5",
                              "--backend", "tflite", "--summary-json", str(tmp_path / "first.json"),
                              "--data-dir", str(data)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until the first has opened its session
            if (data / "wbc.sqlite3").exists():
                try:
                    with Store(data, readonly=True) as s:
                        if s.open_sessions():
                            break
                except (StoreError, sqlite3.Error):  # the file exists a moment before its tables
                    pass
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.5)
        second = cli("run", "--source", f"replay://{SAMPLE_VIDEO}?fps=30", "--headless", "--target", "5",
                     "--data-dir", data)
        err = first.communicate(timeout=600)[1]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert second.returncode == 2 and "another counter is running on the data dir" in second.stderr
    one_clear_line(second)
    assert first.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "first.json").read_text())
    with Store(data) as s:
        rows = s.conn.execute("SELECT id, status FROM sessions").fetchall()
        assert [tuple(r) for r in rows] == [(summary["session"], "finalised")]
        assert s.result(summary["session"])["total"] == 5 == summary["total"]
        assert len(s.cells(summary["session"])) == summary["total"] + summary["other"]


# -- bounded memory ------------------------------------------------------------------------
def test_a_track_keeps_a_copy_never_a_view_of_the_frame():
    frame = np.zeros((480, 640, 3), np.uint8)
    crop = frame[100:200, 100:200]
    t = Track(1, np.zeros(2), 100.0, np.zeros(4), 0, 0, 0.9)
    t.add_vote(np.full(6, 1 / 6), 2, crop, np.ones((7, 7), np.float32), (100, 100, 200, 200), 0)
    assert not np.shares_memory(t.best_crop, frame) and t.best_crop.base is None
    small = kept_crop(frame[0:200, 0:200], 96)
    assert small.shape == (96, 96, 3) and not np.shares_memory(small, frame)


def test_counted_tracks_hold_no_picture(tmp_path):
    from tests.kiosk_fixtures import build_synthetic_pan

    pan = build_synthetic_pan(tmp_path)
    run = LiveRun(cfg=load_config(None), bundle=FakeBundle(), source=open_source(str(pan["video"])),
                  store=Store(tmp_path / "d"), target=1000)
    res = run.run()
    assert res.payload["state"] == "final" and res.payload["complete"] is True and res.payload["reason"] is None
    tracks = run.pipeline.tracker.tracks
    assert any(t.counted for t in tracks)
    assert all(t.best_crop is None for t in tracks if t.counted and t.cell_id is not None)
    side = load_config(None).store.crop_size
    assert all(r.crop is None or max(r.crop.shape[:2]) <= side for r in run.pipeline.review)


# -- the whole path: real runs, the real FHIR engine -------------------------------------------
@pytest.fixture
def fhir_server(tmp_path):
    yield from running_fhir_server(tmp_path)


def _sync(tmp_path, server, data, capsys):
    token = tmp_path / "token"
    if not token.exists():
        write_token(token)
    cfg = write_config(tmp_path / "sync.toml", "[sync]\nbase_backoff_s = 0.001\nmax_backoff_s = 0.002\n"
                                               "[fhir]\ntimeout_s = 60.0\n")
    return run_cli(["sync", "--data-dir", data, "--config", cfg, "--fhir", server.url, "--token-file", token], capsys)


@requires_model
@requires_sample
@pytest.mark.slow
def test_corrupt_video_and_empty_count_are_never_delivered_as_final(tmp_path, fhir_server, capsys):
    data = tmp_path / "d"
    out = tmp_path / "s.json"
    r = cli("run", "--source", corrupt_copy(tmp_path), "--headless", "--backend", "tflite", "--target", "1000",
            "--summary-json", out, "--data-dir", data)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "INCOMPLETE" in r.stderr and "of the 1228 it declares" in r.stderr
    one_clear_line(r)
    s = json.loads(out.read_text())
    assert s["complete"] is False and s["state"] == "incomplete" and "damaged or truncated" in s["reason"]
    assert s["frames"] < 1228 and {"session", "total", "counts", "percent", "ci95", "other", "frames", "fps"} <= set(s)

    r0 = cli("run", "--source", background_patch(tmp_path), "--headless", "--backend", "tflite",
             "--summary-json", tmp_path / "s0.json", "--data-dir", data)
    assert r0.returncode == 3 and "NO-RESULT" in r0.stderr, r0.stderr[-2000:]
    s0 = json.loads((tmp_path / "s0.json").read_text())
    assert s0["total"] == 0 and s0["complete"] is False and s0["state"] == "no-result"

    rep = cli("report", s["session"][:8], "--data-dir", data, "--out", tmp_path / "rep")
    assert rep.returncode == 0 and "INCOMPLETE: video corrupt.mp4" in rep.stdout, rep.stderr[-1000:]

    with Store(data) as store:
        rid_inc, rid_none = (store.conn.execute("SELECT result_id FROM results WHERE session_id=?",
                                                (sid,)).fetchone()[0] for sid in (s["session"], s0["session"]))
        assert [r["result_id"] for r in outbox_rows(store)] == [rid_inc]  # a no-result is never queued
        # Someone queues the no-result anyway (an old build, a hand-made entry): no sender takes it.
        store.conn.execute("INSERT INTO outbox (result_id, destination, next_attempt_at, created_at)"
                           " VALUES (?, 'fhir', '2000-01-01', '2000-01-01')", (rid_none,))
    rc, stdout, err = _sync(tmp_path, fhir_server, data, capsys)
    assert summary_line(stdout)["delivered"] == 0
    assert fhir_server.search("DiagnosticReport") == [] and fhir_server.search("Observation") == []

    for sid in (s["session"], s0["session"]):
        lis = cli("lis", "send", sid[:8], "--port", "loop://", "--data-dir", data)
        assert lis.returncode == 1 and ("INCOMPLETE" in lis.stderr or "NO RESULT" in lis.stderr), lis.stderr
        one_clear_line(lis)

    # Signed by a person only knowing it is incomplete; then, and only then, it goes out.
    unaware = cli("sign", s["session"][:8], "--user", "dr.a", "--data-dir", data)
    assert unaware.returncode == 2 and "INCOMPLETE" in unaware.stderr
    assert cli("sign", s0["session"][:8], "--user", "dr.a", "--data-dir", data).returncode == 2  # no result
    knowing = cli("sign", s["session"][:8], "--user", "dr.a", "--incomplete", "--data-dir", data)
    assert knowing.returncode == 0, knowing.stderr[-1500:]
    rc, stdout, err = _sync(tmp_path, fhir_server, data, capsys)
    reports = fhir_server.search("DiagnosticReport")
    assert summary_line(stdout)["delivered"] == 1 and len(reports) == 1, err
    assert {"system": IDENT_SYSTEM, "value": rid_inc} in reports[0]["identifier"]
    with Store(data) as store:
        none_row = [r for r in outbox_rows(store) if r["result_id"] == rid_none][0]
        assert none_row["status"] != "done"


def test_the_soak_script_says_when_the_run_ended_on_its_own(tmp_path):
    """scripts.soak samples the child's RSS; a child that ends before the time is up fails the soak (it
    returns as soon as the child has gone, not after the 5 minutes)."""
    r = subprocess.run([sys.executable, "-m", "scripts.soak", "--minutes", "5", "--every", "0.2", "--source",
                        str(tmp_path / "missing.mp4")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["ended_early"] is True and out["rc"] == 2
    assert "source not found" in "\n".join(out["log_tail"])
