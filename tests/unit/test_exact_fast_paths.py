"""The per-frame hot path's faster forms give bit for bit what the plain forms give.

``estimate_background`` sums 8-bit pixels as integers, ``decode_detections`` looks only at the cells above
threshold, and the live loop makes the detector's input on the capture thread (``Detector.prepare``). Each
is checked here against the straightforward computation it replaced, on real frames (the shipped sample
video and calibration frames) and on the shipped detector's own heatmaps.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.imaging import preprocess
from edge_app.model.bundle import ModelBundle, decode_detections, nms

ROOT = Path(__file__).resolve().parents[2]


def plain_background(image_rgb: np.ndarray, max_side: int = 64) -> np.ndarray:
    h, w = image_rgb.shape[:2]
    step = max(1, int(max(h, w) // max_side))
    small = image_rgb[::step, ::step].reshape(-1, 3).astype(np.float32)
    grey = small.mean(axis=1)
    threshold = np.quantile(grey, preprocess.BACKGROUND_QUANTILE)
    bright = small[grey >= threshold]
    bg = bright.mean(axis=0) if len(bright) else small.mean(axis=0)
    return np.maximum(bg, 1.0).astype(np.float32)


def plain_decode(heat, ltrb, stride, threshold, nms_iou, vote=True):
    h, w = heat.shape
    padded = np.pad(heat, 1, constant_values=-1.0)
    neigh = np.max(np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)
                             if not (dy == 1 and dx == 1)]), axis=0)
    ys, xs = np.nonzero((heat >= neigh) & (heat >= threshold))
    if not len(ys):
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    scores = heat[ys, xs]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
    d = ltrb.astype(np.float32) * stride
    cell_boxes = np.pad(np.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], axis=-1),
                        ((1, 1), (1, 1), (0, 0)))
    if vote:
        weights = np.pad(np.clip(heat, 0, None), 1)
        acc = np.zeros((len(ys), 4), np.float32)
        wsum = np.zeros((len(ys), 1), np.float32)
        for dy in range(3):
            for dx in range(3):
                wt = weights[ys + dy, xs + dx][:, None]
                acc += wt * cell_boxes[ys + dy, xs + dx]
                wsum += wt
        boxes = (acc / np.maximum(wsum, 1e-6)).astype(np.float32)
    else:
        boxes = cell_boxes[ys + 1, xs + 1].astype(np.float32)
    keep = nms(boxes, scores, nms_iou)
    return boxes[keep], scores[keep].astype(np.float32)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    out = []
    cap = cv2.VideoCapture(str(ROOT / "samples" / "slide_pan_train.mp4"))
    i = 0
    while len(out) < 60:
        ok, f = cap.read()
        if not ok:
            break
        if i % 20 == 0:  # spread over the whole pan
            out.append(preprocess.to_rgb(f))
        i += 1
    cap.release()
    for p in sorted((ROOT / "calibration" / "frames").iterdir())[:40]:
        if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            out.append(preprocess.read_rgb(str(p)))
    assert len(out) >= 40
    return out


@pytest.fixture(scope="module")
def bundle():
    b = ModelBundle(backend="tflite", precision="fp32")
    yield b
    b.close()


def test_background_estimate_is_bit_identical(frames):
    for f in frames:
        for max_side in (32, 64, 128):
            assert np.array_equal(preprocess.estimate_background(f, max_side), plain_background(f, max_side))
        crop = cv2.resize(f, preprocess.CLASSIFIER_SIZE, interpolation=cv2.INTER_AREA)  # the classifier's use
        assert np.array_equal(preprocess.estimate_background(crop, 128), plain_background(crop, 128))
    flat = np.full((48, 64, 3), 200, np.uint8)  # every pixel ties at the quantile
    assert np.array_equal(preprocess.estimate_background(flat), plain_background(flat))


def test_decoding_is_bit_identical_on_the_shipped_detector(frames, bundle):
    det = bundle.detector
    rng = np.random.default_rng(0)
    maps = [det.raw(preprocess.detector_input(f)[0]) for f in frames]
    maps += [(rng.random((15, 20), dtype=np.float32) ** 3, rng.random((15, 20, 4), dtype=np.float32) * 4)
             for _ in range(20)]  # many peaks, on the border too
    found = 0
    for heat, ltrb in maps:
        for thr in (0.05, 0.35, 0.7):
            for vote in (True, False):
                got = decode_detections(heat, ltrb, det.stride, thr, 0.4, vote)
                want = plain_decode(heat, ltrb, det.stride, thr, 0.4, vote)
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
                found += len(got[0])
    assert found > 100  # the comparison saw real boxes, not only empty maps


def test_a_prepared_frame_detects_exactly_as_a_plain_call(frames, bundle):
    det = bundle.detector
    for f in frames[:20]:
        plain = [(d.box.tolist(), d.score) for d in det(f)]
        prepared = det.prepare(f)
        assert [(d.box.tolist(), d.score) for d in det(f, prepared=prepared)] == plain
        assert det.last_ms["preprocess"] == prepared.ms  # the time it took where it ran


def test_a_scale_change_after_prepare_prepares_again(frames, bundle):
    det = bundle.detector
    f = frames[0]
    stale = det.prepare(f)  # made at scale 1 on the capture thread ...
    det.scale = 2.0  # ... then the loop measured the camera's pixel scale
    try:
        fresh = [(d.box.tolist(), d.score) for d in det(f)]
        assert [(d.box.tolist(), d.score) for d in det(f, prepared=stale)] == fresh
    finally:
        det.scale = 1.0


def test_int8_input_quantisation_is_the_plain_formula(frames):
    """The INT8 TFLite models' input quantisation (made on the capture thread for the detector) gives
    round(x / scale + zero) clipped, as the plain expression does, and the same detections."""
    b = ModelBundle(backend="tflite", precision="int8")
    try:
        for backend, inputs in ((b.detector.backend, [preprocess.detector_input(f)[0] for f in frames[:20]]),
                                (b.classifier.backend, [preprocess.classifier_input(cv2.resize(f, (96, 96)))
                                                        for f in frames[:20]])):
            scale, zero = backend._in_q
            for x in inputs + [inputs[0] * 1.7 - 40]:  # and values beyond the int8 range
                plain = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
                got = backend.prepare_input(x)
                assert got.dtype == np.int8 and np.array_equal(got, plain)
                assert backend.prepare_input(got) is got  # already the network's type: passed through
        for f in frames[:10]:
            plain = [(d.box.tolist(), d.score) for d in b.detector(f)]
            assert [(d.box.tolist(), d.score) for d in b.detector(f, prepared=b.detector.prepare(f))] == plain
    finally:
        b.close()
