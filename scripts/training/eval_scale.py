"""Leukocytes found at a fifth of the training magnification, with and without the measured scale.

    python -m scripts.training.eval_scale                       # test split, shrink 5
    python -m scripts.training.eval_scale --split val --target 20   # choosing the reference's target (never test)

A camera with a fifth of the pixels per micron sees a field five times wider
and five times taller, each cell a fifth of the size. That camera's frames are
made here from the detector's held-out frames (``scripts.training.splits``;
BCCD, Chula and TXL-PBC's cameras, one camera per made frame): 5 x 5 real
frames of one camera, each shrunk by 5 and mirrored alternately so the plasma
runs on across the seams, side by side in one field of the original frame's
size. Every cell in it is a real, labelled cell; nothing is drawn. Each camera
gets at least ``MEASURE_FRAMES`` such fields (the frames a session measures its
scale from), its frames reused across fields when it has fewer than that many
fields' worth. Reported per
camera and pooled, with the shipped INT8 TFLite detector (torch-free):

- ``1x``: the held-out frames as they are, scale measured from them (must be 1:
  nothing changes for the trained cameras), and their recall;
- ``fifth_unscaled``: the made frames at scale 1 (what the detector did before);
- ``fifth_measured``: the made frames at the scale ``edge_app.imaging.scale``
  measured from that camera's made frames (as ``run`` measures it from a
  session's first frames), with the detector's cost per frame.

Recall is at IoU 0.5 against the labelled boxes, at the detector's own threshold.

``--ratios`` instead checks the measurement itself against known magnification
ratios: each camera's frames resized by 1/2, 1/3 and 1/5, the measured red-cell
diameter over the diameter at 1x (ideal: the resize factor).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time

import cv2
import numpy as np

from edge_app.detections import matched
from edge_app.imaging import preprocess
from edge_app.imaging.scale import MEASURE_FRAMES, ScaleReference, measure_scale
from edge_app.model.bundle import Detector, Manifest, create_backend
from scripts.training.scale_reference import TXL_CAMERAS

logger = logging.getLogger(__name__)

SHRINK = 5
IOU = 0.5


def held_out_frames(split: str, names: bool = False):
    """(camera, RGB frame, (N, 4) WBC boxes in its pixels) of every detector frame of a split; with
    ``names``, its file name as a fourth item."""
    from scripts.training import data
    from scripts.training.splits import DATASETS, split_of

    def boxes_of(rows):
        return np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows if r["cell"] == "WBC"],
                        np.float32).reshape(-1, 4)

    for image, rows in data._bccd_rows().items():
        if split_of("bccd", image) == split:
            yield ("bccd", preprocess.read_rgb(str(DATASETS / "bccd" / "images" / image)), boxes_of(rows)) \
                + ((image,) if names else ())
    for image, rows in data._chula_rows().items():
        if split_of("chula", image, rows[0]["slide"]) == split:
            yield ("chula", preprocess.read_rgb(str(DATASETS / "chula" / "images" / image)), boxes_of(rows)) \
                + ((image,) if names else ())
    for s, path, yolo in data._txl_items()[0]:
        if s != split:
            continue
        rgb = preprocess.read_rgb(str(path))
        h, w = rgb.shape[:2]
        b = np.array([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                      for cx, cy, bw, bh in yolo], np.float32).reshape(-1, 4)
        yield (TXL_CAMERAS.get((h, w), f"txl_pbc/{w}x{h}"), rgb, b) + ((str(path.name),) if names else ())


def _mirror(img, boxes, fx: bool, fy: bool):
    h, w = img.shape[:2]
    if fx:
        img, boxes = img[:, ::-1], np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    if fy:
        img, boxes = img[::-1], np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
    return img, boxes


def illumination(rgb: np.ndarray) -> np.ndarray:
    """The frame's smooth lamp-and-vignetting pattern (float32 RGB, the plasma's brightness everywhere)."""
    h, w = rgb.shape[:2]
    s = 48 / min(h, w)
    small = cv2.resize(rgb.astype(np.float32), (max(3, round(w * s)), max(3, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    env = cv2.GaussianBlur(cv2.dilate(small, np.ones((9, 9), np.uint8)), (0, 0), 4)
    return np.maximum(cv2.resize(env, (w, h), interpolation=cv2.INTER_LINEAR), 1.0)


def fifth_field(frames, shrink: int = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """One field of the first frame's size holding shrink x shrink of these frames (cycled if fewer),
    each shrunk by ``shrink``; mirrored alternately so neighbouring tiles meet along their own edges.

    The optics are those of one wider field: each frame's own vignetting is
    divided out before it is shrunk, and the camera's mean vignetting is laid
    over the whole field once (a low-magnification camera darkens the corners
    of its field, not of every fifth of it).
    """
    h, w = frames[0][0].shape[:2]
    tw, th = w // shrink, h // shrink
    lamp = np.mean([illumination(f[0]) for f in frames], axis=0)
    lamp = cv2.resize(lamp, (tw * shrink, th * shrink), interpolation=cv2.INTER_LINEAR)
    field = np.zeros((th * shrink, tw * shrink, 3), np.float32)
    boxes = []
    for i in range(shrink * shrink):
        row, col = divmod(i, shrink)
        img, b = frames[i % len(frames)]
        flat = img.astype(np.float32) / illumination(img)
        small = cv2.resize(flat, (tw, th), interpolation=cv2.INTER_AREA)
        sb = b * np.array([tw / img.shape[1], th / img.shape[0]] * 2, np.float32)
        small, sb = _mirror(small, sb, col % 2 == 1, row % 2 == 1)
        field[row * th:(row + 1) * th, col * tw:(col + 1) * tw] = small
        boxes.append(sb + np.array([col * tw, row * th] * 2, np.float32))
    field = np.clip(field * lamp, 0, 255).astype(np.uint8)
    return field, np.concatenate(boxes).reshape(-1, 4)


def _score(detector: Detector, fields) -> dict:
    found = total = predicted = 0
    t0 = time.perf_counter()
    for img, truth in fields:
        pred = np.array([d.box for d in detector(img)], np.float32).reshape(-1, 4)
        found += matched(pred, truth, IOU)
        total += len(truth)
        predicted += len(pred)
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(fields))
    return {"recall": round(found / max(1, total), 4), "found": found, "cells": total,
            "precision": round(found / max(1, predicted), 4), "frames": len(fields), "ms_per_frame": round(ms, 1)}


def evaluate(split: str = "test", shrink: int = SHRINK, per_camera: int | None = None,
             target: float | None = None, cameras: list[str] | None = None, threads: int = 2) -> dict:
    manifest = Manifest.load()
    ref = ScaleReference.from_manifest(manifest.data)
    if ref is None:
        raise SystemExit("models/manifest.json has no models.detector.rbc_diameter_px: run "
                         "python -m scripts.training.scale_reference --write")
    if target is not None:
        ref = ScaleReference(ref.lo, ref.hi, target)
    detector = Detector.for_manifest(create_backend(manifest, "detector", "tflite", "int8", threads), manifest)
    groups: dict[str, list] = {}
    for camera, rgb, boxes in held_out_frames(split):
        if cameras and camera not in cameras:
            continue
        g = groups.setdefault(camera, [])
        if per_camera is None or len(g) < per_camera:
            g.append((rgb, boxes))
    rng = np.random.default_rng(0)
    out: dict = {"split": split, "shrink": shrink, "reference": ref.__dict__, "cameras": {}}
    for camera, frames in sorted(groups.items()):
        frames = [f for f in frames if f[0].shape == frames[0][0].shape]  # one camera, one frame size
        order = rng.permutation(len(frames))
        # as many fields as a session measures its scale from (frames reused across fields when a
        # camera has fewer than that many fields' worth); every field is scored
        per = shrink * shrink
        n_fields = max(MEASURE_FRAMES, -(-len(frames) // per))
        chunks = [[frames[order[(k * per + j) % len(frames)]] for j in range(per)] for k in range(n_fields)]
        fields = [fifth_field(c, shrink) for c in chunks]
        res: dict = {}
        one = measure_scale([f[0] for f in frames], ref)
        detector.scale = one.factor
        res["1x"] = {"scale": one.as_dict(), **_score(detector, frames)}
        detector.scale = 1.0
        res["1x"]["recall_at_scale_1"] = _score(detector, frames)["recall"]
        res["fifth_unscaled"] = _score(detector, fields)
        est = measure_scale([f[0] for f in fields], ref)
        detector.scale = est.factor
        res["fifth_measured"] = {"scale": est.as_dict(), **_score(detector, fields)}
        detector.scale = 1.0
        out["cameras"][camera] = res
        logger.info("%s: %s", camera, json.dumps(res))
    for key in ("1x", "fifth_unscaled", "fifth_measured"):
        found = sum(r[key]["found"] for r in out["cameras"].values())
        cells = sum(r[key]["cells"] for r in out["cameras"].values())
        out[key] = {"recall": round(found / max(1, cells), 4), "found": found, "cells": cells}
    out["cpu"] = platform.processor() or platform.machine()
    return out


def ratios(split: str = "val", per_camera: int = 12) -> dict:
    """Measured diameter ratio at known resize factors, per camera (``per_camera`` frames of one size)."""
    from edge_app.imaging.scale import rbc_diameter

    cams: dict[str, list] = {}
    for camera, rgb, _ in held_out_frames(split):
        frames = cams.setdefault(camera, [])
        if len(frames) < per_camera and (not frames or frames[0].shape == rgb.shape):
            frames.append(rgb)
    out = {}
    for camera, frames in sorted(cams.items()):
        d1 = rbc_diameter(frames)[0]
        row = {"frames": len(frames), "diameter_1x": round(d1, 1)}
        for f in (0.5, 1 / 3, 0.2):
            small = [cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) for x in frames]
            row[f"ratio_at_{f:.2f}"] = round(rbc_diameter(small)[0] / d1, 3) if d1 else None
        out[camera] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--shrink", type=int, default=SHRINK)
    ap.add_argument("--per-camera", type=int, default=None, help="at most N frames per camera (a quick run)")
    ap.add_argument("--camera", action="append", default=None, help="only this camera (repeatable), e.g. bccd")
    ap.add_argument("--target", type=float, default=None, help="try another reference target (val only)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--ratios", action="store_true", help="check the measurement at known resize factors instead")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.target is not None and args.split == "test":
        raise SystemExit("--target is for choosing the reference on val; the test split is never tuned on")
    if args.ratios:
        res = ratios(args.split, args.per_camera or 12)
    else:
        res = evaluate(args.split, args.shrink, args.per_camera, args.target, args.camera)
    text = json.dumps(res, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
