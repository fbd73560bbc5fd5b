"""One detections type from the detector to the tracker (after supervision's ``Detections``).

Columnar: ``xyxy`` is (N, 4) float32 boxes in frame pixels, ``score`` (N,) float32. The detector returns
it, the live loop filters it (``dets[keep]``) and hands it to the tracker whole, so no stage rebuilds
boxes from a list of objects. Indexing with an int, or iterating, gives ``Detection`` rows (a box and a
Python float score) for the places that look at one cell at a time (``detect``, the self-test, framing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class Detection:
    """One detected cell: x1, y1, x2, y2 in frame pixels (float32) and its score."""

    box: np.ndarray
    score: float


class Detections:
    """N detected cells of one frame, as arrays."""

    __slots__ = ("xyxy", "score")

    def __init__(self, xyxy, score):
        self.xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        self.score = np.asarray(score, np.float32).reshape(-1)
        if len(self.xyxy) != len(self.score):
            raise ValueError(f"{len(self.xyxy)} boxes but {len(self.score)} scores")

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.score)

    def __iter__(self) -> Iterator[Detection]:
        for i in range(len(self)):
            yield Detection(self.xyxy[i], float(self.score[i]))

    def __getitem__(self, index) -> "Detection | Detections":
        """An int: that row as a ``Detection``; a mask, index list or slice: those rows as ``Detections``."""
        if isinstance(index, (int, np.integer)):
            return Detection(self.xyxy[index], float(self.score[index]))
        if isinstance(index, list):
            index = np.asarray(index, dtype=np.intp)
        return Detections(self.xyxy[index], self.score[index])

    def __repr__(self) -> str:
        return f"Detections(n={len(self)})"


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of two sets of x1, y1, x2, y2 boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    xx1 = np.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = np.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-6)


def matched(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Labelled boxes found (one prediction per box, best IoU first)."""
    if not len(pred) or not len(truth):
        return 0
    m = iou_matrix(truth, pred)
    found = 0
    while m.size and m.max() >= iou:
        t, p = np.unravel_index(np.argmax(m), m.shape)
        found += 1
        m[t, :] = -1
        m[:, p] = -1
    return found
