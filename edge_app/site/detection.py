"""The detector's side of a site profile, fitted on the site's labelled frames.

A frame row of ``wbc-counter adapt --labels`` (``image,x1,y1,x2,y2,label``) is one leukocyte of a whole
frame, and every leukocyte of a labelled frame has its row, so a frame says both what the detector must
find and what it must not. From those frames a profile takes:

- the camera's **pixel scale**, measured from the frames' red cells (``edge_app.imaging.scale``): the
  profile then fixes the magnification, and a session need not measure it again;
- a **score threshold**: the detector is run once per frame at ``LOW`` and every grid threshold scored
  from that one run (greedy NMS over the boxes above a threshold keeps exactly the boxes a run at that
  threshold keeps). The threshold with the best F1 (IoU ``IOU``) over the fitted frames is chosen, ties
  going to the one nearest the shipped threshold. It is kept only if its F1 on frames held back from the
  fit is at least the shipped threshold's; otherwise the profile keeps the shipped threshold and says why.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from edge_app.detections import matched

logger = logging.getLogger(__name__)

# The thresholds a profile may choose from, and the score every frame is first decoded at.
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.10, 0.701, 0.05))
LOW = 0.05
IOU = 0.5  # matching a found box to a labelled one (edge_app.detections.matched's default)
# Fewer labelled frames than this: the threshold stays the shipped one (one held back is too few).
MIN_FRAMES = 4
HELD_BACK_FRACTION = 0.25


@dataclass
class LabelledFrame:
    name: str
    image_rgb: np.ndarray
    boxes: np.ndarray  # (N, 4) every leukocyte in it, frame pixels


def detections(detector, frames: list[LabelledFrame]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, scores) of every frame at ``LOW``: each threshold's result is a subset of these."""
    out = []
    for f in frames:
        found = detector(f.image_rgb, threshold=LOW)
        out.append((found.xyxy, found.score))
    return out


def score(dets, frames: list[LabelledFrame], threshold: float) -> dict:
    """Found / predicted / labelled and F1 over ``frames`` at ``threshold``."""
    found = predicted = cells = 0
    for (boxes, scores), f in zip(dets, frames):
        keep = boxes[scores >= threshold]
        found += matched(keep, f.boxes, IOU)
        predicted += len(keep)
        cells += len(f.boxes)
    recall = found / cells if cells else 0.0
    precision = found / predicted if predicted else 0.0
    f1 = 2 * found / (cells + predicted) if cells + predicted else 0.0
    return {"found": found, "predicted": predicted, "cells": cells, "recall": round(recall, 4),
            "precision": round(precision, 4), "f1": round(f1, 4)}


def choose(dets, frames: list[LabelledFrame], shipped: float) -> float:
    """The grid threshold with the best F1 over ``frames``; ties: the one nearest ``shipped``."""
    best = max(THRESHOLDS, key=lambda t: (score(dets, frames, t)["f1"], -abs(t - shipped)))
    return float(best)


def held_back_frames(frames: list[LabelledFrame]) -> np.ndarray:
    """A quarter of the frames (at least one), chosen by their pixels' hash: the same frames anywhere."""
    keys = [hashlib.sha256(np.ascontiguousarray(f.image_rgb).tobytes()).hexdigest() for f in frames]
    n = max(1, int(round(HELD_BACK_FRACTION * len(frames))))
    mask = np.zeros(len(frames), bool)
    mask[np.argsort(keys)[:n]] = True
    return mask


def fit_threshold(detector, frames: list[LabelledFrame], shipped: float) -> dict:
    """The profile's threshold record: ``value`` (the threshold to use), whether it was ``fitted``, the
    held-back figures (F1 of the shipped and the fitted threshold) and, when it was not fitted, why."""
    if len(frames) < MIN_FRAMES:
        return {"value": float(shipped), "shipped": float(shipped), "fitted": False, "frames": len(frames),
                "why": f"{len(frames)} labelled frames; a threshold is fitted from {MIN_FRAMES} or more"}
    return threshold_record(detections(detector, frames), frames, shipped)


def threshold_record(dets, frames: list[LabelledFrame], shipped: float) -> dict:
    """``fit_threshold`` on detections already made (``detections``): evaluations reuse one run per frame."""
    rec = {"value": float(shipped), "shipped": float(shipped), "fitted": False, "frames": len(frames)}
    if len(frames) < MIN_FRAMES:
        rec["why"] = f"{len(frames)} labelled frames; a threshold is fitted from {MIN_FRAMES} or more"
        return rec
    hold = held_back_frames(frames)
    fit = [i for i in range(len(frames)) if not hold[i]]
    held = [i for i in range(len(frames)) if hold[i]]
    t = choose([dets[i] for i in fit], [frames[i] for i in fit], shipped)
    before = score([dets[i] for i in held], [frames[i] for i in held], shipped)
    after = score([dets[i] for i in held], [frames[i] for i in held], t)
    rec["held_back"] = {"frames": len(held), "cells": before["cells"], "before": before, "after": after}
    rec["chosen"] = t
    if after["f1"] < before["f1"]:
        rec["why"] = (f"threshold {t:.2f} scored F1 {after['f1']:.3f} on {len(held)} held-back frames, the "
                      f"shipped {shipped:.2f} {before['f1']:.3f}: the shipped threshold is kept")
        return rec
    rec.update(value=t, fitted=True)
    return rec


def fit(bundle, frames: list[LabelledFrame]) -> dict:
    """The profile's ``detector`` record: the pixel scale measured from ``frames`` and the threshold fitted
    on them at that scale. The bundle's detector is left as it was."""
    det = bundle.detector
    est = bundle.measure_scale([f.image_rgb for f in frames])
    old_scale = det.scale
    det.scale = est.factor
    try:
        threshold = fit_threshold(det, frames, det.threshold)
    finally:
        det.scale = old_scale
    logger.info("site detector: pixel scale %.2f (red cells %.1f px), threshold %.2f (%s)", est.factor,
                est.rbc_diameter_px, threshold["value"], "fitted" if threshold["fitted"] else "shipped")
    return {"pixel_scale": est.as_dict(), "threshold": threshold}
