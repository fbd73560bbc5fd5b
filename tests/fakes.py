"""Test doubles for the model (the real one is trained elsewhere) and synthetic slides.

``FakeBundle`` keeps the real ``Detector`` / ``Classifier`` code (letterbox,
background normalisation, heatmap decoding, NMS, crop) and replaces only the
two networks with small colour rules that are exact on synthetic slides:
leukocytes are dark discs whose red level encodes the class. A synthetic
slide has pink red cells as texture (for the phase correlation) and a known
set of leukocytes, so a pan video over it has an exact ground truth.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_app.backends.base import Backend, TensorSpec
from edge_app.imaging.preprocess import CLASSIFIER_SIZE
from edge_app.labels import CLASSES
from edge_app.model.bundle import Classifier, Detector
from scripts.training.make_sample_video import focus_slips, pan_path

BACKGROUND_BGR = (232, 230, 232)
RBC_BGR = (165, 150, 222)
STRIDE = 8


def nucleus_bgr(class_index: int) -> tuple[int, int, int]:
    """Leukocyte colour (BGR): red channel encodes the class, green stays dark."""
    return (130, 25, 30 + 35 * class_index)


class FakeDetectorBackend(Backend):
    name = "fake"

    def __init__(self, size=(320, 240), stride=STRIDE):
        self.w, self.h = size
        self.stride = stride

    @property
    def input_spec(self):
        return TensorSpec("image", (1, self.h, self.w, 3))

    def infer(self, x):
        img = x[0]
        mask = ((img[..., 1] < 90) & (img[..., 2] > 80)).astype(np.uint8)  # RGB: dark green, some blue
        gh, gw = self.h // self.stride, self.w // self.stride
        heat = np.zeros((1, gh, gw, 1), np.float32)
        ltrb = np.zeros((1, gh, gw, 4), np.float32)
        n, _, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for i in range(1, n):
            x0, y0, bw, bh, area = stats[i]
            if area < 30:
                continue
            cx, cy = cents[i]
            gx, gy = min(gw - 1, int(cx // self.stride)), min(gh - 1, int(cy // self.stride))
            ccx, ccy = (gx + 0.5) * self.stride, (gy + 0.5) * self.stride
            heat[0, gy, gx, 0] = 0.9
            ltrb[0, gy, gx] = [(ccx - x0) / self.stride, (ccy - y0) / self.stride,
                               (x0 + bw - ccx) / self.stride, (y0 + bh - ccy) / self.stride]
        return [heat, ltrb]


class FakeClassifierBackend(Backend):
    name = "fake"

    @property
    def input_spec(self):
        return TensorSpec("crop", (1, *CLASSIFIER_SIZE[::-1], 3))

    def infer(self, x):
        img = x[0]
        dark = img[..., 1] < 90
        probs = np.full((1, len(CLASSES)), 0.1 / (len(CLASSES) - 1), np.float32)
        if dark.sum() < 20:
            probs[0, CLASSES.index("other")] = 0.9
        else:
            red = float(img[..., 0][dark].mean())
            k = int(np.clip(round((red - 30) / 35), 0, len(CLASSES) - 1))
            probs[0, k] = 0.9
        attention = cv2.resize(dark.astype(np.float32), (12, 12))[None, ..., None]
        return [probs, attention]


class FakeBundle:
    """Same surface as ``ModelBundle`` (detector, classifier, backend_name, version, close)."""

    backend_name = "fake"
    version = "fake-1"

    def __init__(self):
        self.detector = Detector(FakeDetectorBackend(), STRIDE, threshold=0.35)
        self.classifier = Classifier(FakeClassifierBackend())

    def close(self):
        return None


def make_slide(rng: np.random.Generator, size=(2400, 960), n_cells: int = 24, radius=(26, 36),
               classes=None) -> tuple[np.ndarray, list[dict]]:
    """A synthetic slide (BGR) and its leukocytes [{'class', 'center', 'r'}]."""
    w, h = size
    slide = np.full((h, w, 3), BACKGROUND_BGR, np.uint8)
    for _ in range(int(w * h / 2500)):  # red cells: texture for the stage-motion estimate
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(12, 20))
        cv2.circle(slide, (cx, cy), r, RBC_BGR, -1, cv2.LINE_AA)
        cv2.circle(slide, (cx, cy), r // 2, (190, 175, 235), -1, cv2.LINE_AA)
    cells: list[dict] = []
    tries = 0
    while len(cells) < n_cells and tries < 10000:
        tries += 1
        r = int(rng.integers(*radius))
        cx, cy = int(rng.integers(60, w - 60)), int(rng.integers(60, h - 60))
        if any((cx - c["center"][0]) ** 2 + (cy - c["center"][1]) ** 2 < (3.2 * max(r, c["r"])) ** 2 for c in cells):
            continue
        k = int(classes[len(cells) % len(classes)]) if classes is not None else int(rng.integers(0, 5))
        cv2.circle(slide, (cx, cy), r + 4, (200, 190, 230), -1, cv2.LINE_AA)
        cv2.circle(slide, (cx, cy), r, nucleus_bgr(k), -1, cv2.LINE_AA)
        cells.append({"class": CLASSES[k], "center": (cx, cy), "r": r})
    return slide, cells


def write_pan_video(path: Path, slide: np.ndarray, rng: np.random.Generator, speed: float = 16.0,
                    slips: int = 2, fps: float = 30.0, max_frames: int | None = None) -> dict:
    """Pan a 640x480 view across the slide (hand-like path); returns path + slip info."""
    h, w = slide.shape[:2]
    pts = pan_path(w, h, rng, speed=speed)
    if max_frames:
        pts = pts[:max_frames]
    sigma = focus_slips(len(pts), rng, slips) if slips else np.zeros(len(pts))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    assert writer.isOpened()
    for (x, y), s in zip(pts, sigma):
        view = slide[y:y + 480, x:x + 640]
        if s > 0.3:
            view = cv2.GaussianBlur(view, (0, 0), s)
        writer.write(np.ascontiguousarray(view))
    writer.release()
    return {"path": pts, "sigma": sigma}


class NoisyDetector:
    """Wraps a detector the way a real one misbehaves: box jitter, missed frames, stray boxes."""

    def __init__(self, inner, seed: int = 0, jitter_px: float = 5.0, miss: float = 0.2, stray: float = 0.05):
        self.inner = inner
        self.rng = np.random.default_rng(seed)
        self.jitter_px, self.miss, self.stray = jitter_px, miss, stray

    @property
    def box_scale(self) -> float:  # part of the Detector surface the runner records per session
        return self.inner.box_scale

    @property
    def refine(self) -> bool:
        return self.inner.refine

    @property
    def scale(self) -> float:
        return self.inner.scale

    def prepare(self, frame_rgb, background=None):
        return self.inner.prepare(frame_rgb, background)

    def __call__(self, frame_rgb, background=None, prepared=None):
        from edge_app.detections import Detections

        boxes, scores = [], []
        for d in self.inner(frame_rgb, background, prepared=prepared):
            if self.rng.random() < self.miss:
                continue
            boxes.append((d.box + self.rng.normal(0, self.jitter_px, 4)).astype(np.float32))
            scores.append(d.score)
        if self.rng.random() < self.stray:
            h, w = frame_rgb.shape[:2]
            x, y = self.rng.uniform(0, w - 60), self.rng.uniform(0, h - 60)
            boxes.append(np.array([x, y, x + 60, y + 60], np.float32))
            scores.append(0.4)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores)
