"""The camera's pixel scale, measured from its own frames.

Red cells are the one object every smear is full of, and they are nearly the
same size in every adult's blood (about 7.5 µm). Their median diameter in
pixels therefore measures a camera's pixels per micron without a stage
micrometer. ``measure_scale`` finds it; the factor it returns is how much a
frame must be enlarged (or shrunk) so that its cells reach the detector at the
size the detector was trained on (the manifest's ``models.detector.rbc_diameter_px``,
measured on the detector's training frames by ``python -m scripts.training.scale_reference``).

How a diameter is measured, and why:
- green channel, divided by a coarse estimate of the local background (the
  brightest plasma around it), as optical density: vignetting and lamp colour
  drop out (Chula's corners are half as bright as its centre);
- a threshold between plasma and stained cells (Otsu on that density), the
  pale centres of red cells filled;
- the distance transform of that mask: its local maxima are the centres of the
  cells and their values the radii, also where cells touch or overlap (a clump
  of red cells is not one big cell);
- per frame, the median over its cells weighted by their area (the few
  leukocytes, platelets and specks of noise are outliers it ignores); over
  frames, the median of those (an odd frame cannot pull it); small cells are
  measured again on enlarged frames (smoothing would merge touching ones);
- an agreement figure (the share of cell area near that median): frames that
  show no clear cell size (crowded fields whose cells merge) are not trusted.

The detector's training frames span several magnifications (Chula's cells are
a third the size of BCCD's in detector pixels), so it has a trained *range* of
sizes. A camera whose red cells fall inside it (with ``TOLERANCE``) is left
alone (factor 1: the shipped cameras see exactly what they saw before); only
one outside it is resized, to the reference's ``target`` size (the size the
detector saw most: a blurred, enlarged small cell is found more reliably
there than at the range's lower edge, ``models/EVALUATION.md``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge_app import paths
from edge_app.imaging import preprocess

logger = logging.getLogger(__name__)

# A measured size this close to the trained range counts as inside it.
TOLERANCE = 0.15
# Measured from fewer frames than MEASURE_FRAMES (a single image given to `detect`), the size must
# leave the trained range by this much: one frame of a trained camera can misread by 15-30%
# (18 of Chula's 348 frames read below its range by more than 15%, 10 by more than 30%).
FEW_FRAMES_TOLERANCE = 0.45
FEW_FRAMES_AGREEMENT = 0.3
# Fewer red cells than this over all frames: the estimate is not trusted (factor 1).
MIN_CELLS = 20
# Smallest radius (frame pixels) a cell centre may have: below it, noise and platelets.
MIN_RADIUS = 1.5
# The factor is never taken beyond these (a frame enlarged 8x is 64 detector windows).
FACTOR_LIMITS = (0.25, 8.0)
# A median diameter below this (frame px) is measured again on enlarged frames, by at most FINE_UPSCALE.
FINE_DIAMETER = 32.0
FINE_UPSCALE = 4.0
FINE_PIXELS = 1_500_000
# Frames a session measures its scale from (``ScaleMeter``).
MEASURE_FRAMES = 8
# A cell agrees with the median when their diameters differ by less than this factor.
AGREEMENT_BAND = 1.3
# Below this agreement the frames do not show one clear cell size (crowded fields whose touching
# cells merge, rings read as outlines): the estimate is reported but not used (factor 1). On the
# detector's train frames, runs of 8 frames agree 0.4 to 0.8 (0.04 and 0.18 on two crowded Chula runs
# that misread); fields at a fifth of the magnification 0.13 (Chula) to 0.57 (BCCD).
MIN_AGREEMENT = 0.1
# Side (px) of the coarse background map: one cell in it spans many frame pixels,
# so no cell is ever mistaken for background whatever the magnification.
_BG_GRID = 48


@dataclass(frozen=True)
class ScaleReference:
    """The detector's trained red-cell sizes, in detector-input pixels."""

    lo: float  # the smallest camera's median red-cell diameter
    hi: float  # the largest camera's
    target: float  # where a camera outside [lo, hi] is brought

    @classmethod
    def from_manifest(cls, manifest_data: dict) -> "ScaleReference | None":
        """The reference a manifest records, or None for a model without one (frames are then never resized)."""
        data = manifest_data.get("models", {}).get("detector", {}).get("rbc_diameter_px")
        if data is None:
            return None
        try:
            ref = cls(float(data["lo"]), float(data["hi"]), float(data["target"]))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("manifest models.detector.rbc_diameter_px cannot be read (%s): frames are not resized", exc)
            return None
        if not 0 < ref.lo <= ref.target <= ref.hi:
            logger.warning("manifest models.detector.rbc_diameter_px %s is not lo <= target <= hi: frames are not "
                           "resized", data)
            return None
        return ref

    def factor_for(self, diameter_at_detector: float, tolerance: float | None = None) -> float:
        """Resize factor for a camera whose red cells measure this many detector-input pixels."""
        tol = TOLERANCE if tolerance is None else tolerance
        if not diameter_at_detector > 0:
            return 1.0
        if self.lo / (1 + tol) <= diameter_at_detector <= self.hi * (1 + tol):
            return 1.0
        return float(np.clip(self.target / diameter_at_detector, *FACTOR_LIMITS))


@dataclass(frozen=True)
class ScaleEstimate:
    """What ``measure_scale`` found.

    ``factor``: resize the frame by this before the detector (1.0 = as it is);
    ``rbc_diameter_px``: median red-cell diameter in the frames' own pixels;
    ``n_cells``: red cells measured; ``confidence``: 0..1, from the number of
    cells and how tightly their sizes agree (0 = not measured, factor 1).
    """

    factor: float
    rbc_diameter_px: float
    n_cells: int
    confidence: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _background_od(frame_rgb: np.ndarray) -> np.ndarray:
    """Optical density of the green channel against the local plasma (float32, >= 0)."""
    g = frame_rgb[..., 1].astype(np.float32) + 1.0
    h, w = g.shape
    s = _BG_GRID / min(h, w)
    small = cv2.resize(g, (max(3, round(w * s)), max(3, round(h * s))), interpolation=cv2.INTER_AREA)
    # the brightest neighbourhood value is plasma; a cell never fills a window a sixth of the frame wide
    k = max(3, (_BG_GRID // 6) | 1)
    bg = cv2.dilate(small, np.ones((k, k), np.uint8))
    bg = cv2.GaussianBlur(bg, (0, 0), k / 2)
    bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.maximum(np.log(np.maximum(bg, g) / g), 0.0)


def cell_radii(frame_rgb: np.ndarray) -> np.ndarray:
    """Radii (frame pixels) of the round stained objects of one frame, one per cell centre."""
    od = _background_od(frame_rgb)
    if float(od.max()) <= 0.02:
        return np.zeros(0, np.float32)
    od = cv2.GaussianBlur(od, (0, 0), 1.0)
    # scaled so the densest 5% (leukocyte nuclei) saturate: the threshold then falls between plasma and red cells
    od8 = np.clip(od * (255.0 / max(float(np.quantile(od, 0.95)), 1e-3)), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(od8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # fill pale centres: a hole is a region of plasma enclosed by one cell
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 255, thickness=cv2.FILLED)
    dt = cv2.distanceTransform(filled, cv2.DIST_L2, 5)
    peaks = (dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8))) & (dt >= MIN_RADIUS)
    ys, xs = np.nonzero(peaks)
    if not len(ys):
        return np.zeros(0, np.float32)
    r = dt[ys, xs]
    h, w = dt.shape
    # a cell cut by the frame's edge is measured too small
    inside = (xs >= r) & (ys >= r) & (xs < w - r) & (ys < h - r)
    ys, xs, r = ys[inside], xs[inside], r[inside]
    # one centre per cell: the largest radius wins, every other peak inside it is its ridge
    order = np.argsort(-r)
    kept: list[int] = []
    taken = np.zeros(len(r), bool)
    for i in order:
        if taken[i]:
            continue
        kept.append(i)
        d2 = (xs - xs[i]) ** 2 + (ys - ys[i]) ** 2
        taken |= d2 < (r[i] * 1.0) ** 2
    return r[kept].astype(np.float32)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs) -> np.ndarray:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    cum /= cum[-1]
    return np.array([values[order][min(len(values) - 1, int(np.searchsorted(cum, q)))] for q in qs])


def rbc_diameter(frames_rgb: list[np.ndarray]) -> tuple[float, int, float]:
    """(median diameter in frame pixels, cells measured, agreement 0..1) over all frames (``_rbc_diameter``).

    Small cells are measured again on the frames enlarged to about ``FINE_DIAMETER``:
    at a few pixels across, the smoothing that keeps noise out of the mask also
    closes the gaps between touching cells, and the clump reads as one big cell.
    """
    d, n, agreement = _rbc_diameter(frames_rgb)
    if 0 < d < FINE_DIAMETER:
        up = min(FINE_UPSCALE, FINE_DIAMETER / d)
        big = [cv2.resize(_centre(f, up), None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC) for f in frames_rgb]
        d2, n2, agreement2 = _rbc_diameter(big)
        if n2 >= 3:
            return d2 / up, n2, agreement2
    return d, n, agreement


def _centre(frame: np.ndarray, up: float) -> np.ndarray:
    """The frame's centre, small enough that enlarged by ``up`` it stays near FINE_PIXELS
    (small cells are many: the centre of a frame holds plenty)."""
    h, w = frame.shape[:2]
    keep = min(1.0, (FINE_PIXELS / (h * w * up * up)) ** 0.5)
    ch, cw = max(8, int(h * keep)), max(8, int(w * keep))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return frame[y0:y0 + ch, x0:x0 + cw]


def _rbc_diameter(frames_rgb: list[np.ndarray]) -> tuple[float, int, float]:
    """Per frame, the area-weighted median diameter (each centre weighs the area it stands for, so a
    red cell outweighs specks of noise and platelets); over frames, the plain median of those, so one
    odd frame (an empty field, a smear edge) cannot pull the estimate. The third value is the
    agreement: the share of the measured area, each frame counting once, in cells within
    ``AGREEMENT_BAND`` of that median."""
    per_frame, cells, n = [], [], 0
    for f in frames_rgb:
        r = cell_radii(f)
        if len(r) < 3:
            continue
        # +0.5: the distance transform's value at a centre is half a pixel short of the drawn radius
        d = 2.0 * (r + 0.5)
        per_frame.append(float(_weighted_quantiles(d, d ** 2, [0.5])[0]))
        cells.append(d)
        n += len(r)
    if not per_frame:
        return 0.0, n, 0.0
    med = float(np.median(per_frame))
    agree = [float(np.sum(d ** 2 * (np.abs(np.log(d / med)) <= np.log(AGREEMENT_BAND))) / np.sum(d ** 2))
             for d in cells]
    return med, n, float(np.mean(agree))


def is_unit(factor: float) -> bool:
    """A resize factor this close to 1 changes nothing (the detector was trained across wider
    variation than that): the frame is letterboxed exactly as for the shipped cameras."""
    return 1 / (1 + TOLERANCE) <= factor <= 1 + TOLERANCE


def detector_scale(frame_shape) -> float:
    """Frame pixels -> detector-input pixels, as the letterbox to the detector's size maps them."""
    h, w = frame_shape[:2]
    return min(preprocess.DETECTOR_SIZE[0] / w, preprocess.DETECTOR_SIZE[1] / h)


def measure_scale(frames_rgb: list[np.ndarray], reference: ScaleReference | None = None) -> ScaleEstimate:
    """The factor by which these frames (one camera, one magnification) must be resized so their
    leukocytes reach the detector at the size it was trained on.

    ``reference`` is the model's (``ScaleReference.from_manifest``; ``ModelBundle.measure_scale``
    passes it; None = the shipped model's). Too few red cells to trust, or a
    model without a reference, give factor 1; the diameter is reported all the same.
    """
    frames = [f for f in frames_rgb if f is not None and f.ndim == 3 and f.size]
    if not frames:
        return ScaleEstimate(1.0, 0.0, 0, 0.0)
    diameter, n, agreement = rbc_diameter(frames)
    confidence = 0.0 if n < MIN_CELLS else agreement * min(1.0, n / 100)
    ref = reference if reference is not None else _shipped_reference()
    factor = 1.0
    few = len(frames) < MEASURE_FRAMES
    trusted = agreement >= (FEW_FRAMES_AGREEMENT if few else MIN_AGREEMENT)
    if ref is not None and n >= MIN_CELLS and trusted and diameter > 0:
        factor = ref.factor_for(diameter * detector_scale(frames[0].shape),
                                FEW_FRAMES_TOLERANCE if few else TOLERANCE)
    return ScaleEstimate(round(factor, 4), diameter, n, round(confidence, 3))


def _shipped_reference() -> ScaleReference | None:
    try:
        data = json.loads((paths.shipped_models_dir() / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ScaleReference.from_manifest(data) if isinstance(data, dict) else None


class ScaleMeter:
    """A session's scale, measured from its first frames and then fixed.

    ``add`` the frames the counter works on; after the first one with enough red
    cells ``estimate`` is a provisional value, and once ``frames`` of them are in,
    the final one (``done``): later frames are not measured.
    """

    def __init__(self, reference: ScaleReference | None, frames: int = MEASURE_FRAMES):
        self.reference = reference
        self.frames = frames
        self._seen: list[np.ndarray] = []
        self.estimate: ScaleEstimate | None = None
        self.done = False

    def add(self, frame_rgb: np.ndarray) -> ScaleEstimate | None:
        """Take one frame; returns a new estimate when this frame changed it, else None."""
        if self.done:
            return None
        self._seen.append(frame_rgb)
        last = len(self._seen) >= self.frames
        if self.estimate is not None and self.estimate.n_cells >= MIN_CELLS and not last:
            return None  # provisional value in force; the final one waits for the last frame
        est = measure_scale(self._seen, self.reference)
        if last:
            self.done = True
            self._seen = []
        if est.n_cells < MIN_CELLS and not last:
            return None
        self.estimate = est
        return est
