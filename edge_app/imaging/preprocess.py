"""Image preprocessing, defined once for training, export and runtime.

Everything a pixel goes through before it reaches a network lives here, in
numpy + OpenCV only, so ``scripts/training/train.py`` (PyTorch), ``scripts/training/export.py``
(calibration, parity) and ``edge_app`` (the kiosk) call the very same code.
The networks themselves take RGB pixel values in 0..255 (NHWC, float32) and do
their own mean/std scaling inside the graph; that keeps the INT8 input
quantisation an exact copy of an 8-bit pixel.

Why background referencing: brightfield smears differ between cameras mostly
by illumination colour and intensity (white balance, lamp, vignetting). The
plasma between cells is the brightest, most neutral part of any field, so
scaling each channel until that background is a fixed grey removes most of the
camera's colour cast before the network sees the image.

Why stain-density referencing (classifier crops; selected per model by its
manifest's ``stain_norm``): cameras and
stains also differ in *contrast*. In optical density (OD, Beer-Lambert) the
darkest part of a leukocyte crop (its nucleus or granules) sits near OD 3.7
on PBC but near 1.1 on the pale, defocused Chula camera. Scaling the crop's OD
so its 99th percentile is a fixed value removes that difference the same way
the background step removes the colour cast. Frames are not stretched: a field
without a leukocyte has no nucleus to reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.imaging.imagesize import decode_rgb

logger = logging.getLogger(__name__)

# Network input sizes (width, height). The manifest repeats them; runtime
# checks that both agree.
DETECTOR_SIZE = (320, 240)
CLASSIFIER_SIZE = (128, 128)
# Square crop side = longest box side * (1 + 2 * CROP_MARGIN).
CROP_MARGIN = 0.2
# Plasma background is mapped to this grey level in every channel.
BACKGROUND_LEVEL = 230.0
# Fraction of brightest pixels taken as background.
BACKGROUND_QUANTILE = 0.85
# Classifier crops: OD percentile that is mapped to STAIN_OD_TARGET (summed over
# RGB), and the limits of that gain (a crop that is nearly empty is not blown up).
STAIN_OD_PERCENTILE = 99.0
STAIN_OD_TARGET = 3.0
STAIN_GAIN_LIMITS = (1.0 / 3.0, 3.0)


def to_rgb(image_bgr: np.ndarray) -> np.ndarray:
    """OpenCV decodes BGR; every network here takes RGB."""
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as RGB uint8; raise ValueError if it is not an image or is too large
    to decode (its header is read first: ``imagesize.MAX_IMAGE_PIXELS``)."""
    return decode_rgb(np.fromfile(path, dtype=np.uint8))


def estimate_background(image_rgb: np.ndarray, max_side: int = 64) -> np.ndarray:
    """Per-channel colour of the slide background (plasma), float32 (3,).

    The mean colour of the brightest pixels of a strided sample about
    ``max_side`` pixels across (frames: speed in the per-frame path).
    """
    h, w = image_rgb.shape[:2]
    step = max(1, int(max(h, w) // max_side))
    sub = image_rgb[::step, ::step]
    if sub.dtype == np.uint8 and sub.ndim == 3 and sub.shape[2] == 3 and sub.shape[0] * sub.shape[1] * 255 < 1 << 24:
        return _background_u8(np.ascontiguousarray(sub).reshape(-1, 3))
    small = sub.reshape(-1, 3).astype(np.float32)
    grey = small.mean(axis=1)
    threshold = np.quantile(grey, BACKGROUND_QUANTILE)
    bright = small[grey >= threshold]
    bg = bright.mean(axis=0) if len(bright) else small.mean(axis=0)
    return np.maximum(bg, 1.0).astype(np.float32)


def _background_u8(small: np.ndarray) -> np.ndarray:
    """``estimate_background``'s float32 arithmetic on (N, 3) uint8 pixels, with integer sums.

    Bit-identical: a sum of 8-bit values below 2**24 is exact in float32 in any order, and the mean
    is that sum divided once, as numpy's float32 mean does; it skips converting every pixel to float.
    """
    s = small[:, 0].astype(np.uint16)
    s += small[:, 1]
    s += small[:, 2]
    grey = s.astype(np.float32) / np.float32(3)
    bright = grey >= np.quantile(grey, BACKGROUND_QUANTILE)
    n = int(np.count_nonzero(bright))
    picked = small[bright] if n else small
    bg = picked.sum(axis=0, dtype=np.int64).astype(np.float32) / np.float32(len(picked))
    return np.maximum(bg, 1.0).astype(np.float32)


def normalise_background(image_rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Scale channels so the background becomes BACKGROUND_LEVEL grey.

    Returns float32 RGB in 0..255. Pass ``background`` to reuse a frame-level
    estimate for several crops of the same frame.
    """
    bg = estimate_background(image_rgb) if background is None else background
    gain = (BACKGROUND_LEVEL / bg).astype(np.float32)
    if image_rgb.dtype == np.uint8 and image_rgb.ndim == 3 and image_rgb.shape[2] == 3:
        # An 8-bit channel has 256 values: the same float32 products looked up from a table are
        # bit-identical to multiplying every pixel, and about ten times cheaper on a frame.
        lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain[None, :], 0.0, 255.0)
        return cv2.LUT(np.ascontiguousarray(image_rgb), lut.reshape(1, 256, 3))
    out = image_rgb.astype(np.float32) * gain
    return np.clip(out, 0.0, 255.0, out=out)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the detector input, to map boxes back."""

    scale: float
    pad_x: int
    pad_y: int

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x1,y1,x2,y2 boxes from network pixels to frame pixels."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def letterbox(image: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE,
              fill: float = 0.0) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio and pad to ``size`` (w, h)."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.full((h, w, 3), fill, dtype=image.dtype)
    px, py = (w - nw) // 2, (h - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, Letterbox(scale, px, py)


def detector_input(frame_rgb: np.ndarray, background: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """Frame (any size, RGB uint8) -> detector tensor (1, H, W, 3) float32."""
    # Letterbox first (cheap on the small image), normalise with the full
    # frame's background so padding does not bias the estimate; padding is
    # filled with that background so it maps to plain "empty slide" grey.
    bg = estimate_background(frame_rgb) if background is None else background
    boxed, lb = letterbox(frame_rgb, DETECTOR_SIZE, fill=0)
    norm = normalise_background(boxed, bg)
    nh, nw = round(frame_rgb.shape[0] * lb.scale), round(frame_rgb.shape[1] * lb.scale)
    norm[:lb.pad_y] = BACKGROUND_LEVEL
    norm[lb.pad_y + nh:] = BACKGROUND_LEVEL
    norm[:, :lb.pad_x] = BACKGROUND_LEVEL
    norm[:, lb.pad_x + nw:] = BACKGROUND_LEVEL
    return norm[None], lb


def square_box(box, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """Square x1,y1,x2,y2 around a cell box, padded by ``margin`` per side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    half = max(side / 2, 4.0)
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def crop_square(image: np.ndarray, sq: tuple[int, int, int, int]) -> np.ndarray:
    """Cut a square region, replicating the border where it leaves the image."""
    x1, y1, x2, y2 = sq
    h, w = image.shape[:2]
    top, left = max(0, -y1), max(0, -x1)
    bottom, right = max(0, y2 - h), max(0, x2 - w)
    region = image[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
    if region.size == 0:
        return np.zeros((max(1, y2 - y1), max(1, x2 - x1), 3), dtype=image.dtype)
    if top or left or bottom or right:
        region = cv2.copyMakeBorder(region, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return region


def cell_crop(frame_rgb: np.ndarray, box, margin: float = CROP_MARGIN) -> np.ndarray:
    """The RGB uint8 crop the classifier sees for a detected box (unresized)."""
    return crop_square(frame_rgb, square_box(box, margin))


def normalise_stain(image: np.ndarray) -> np.ndarray:
    """Scale optical density so the crop's darkest stain has a fixed OD.

    ``image`` is background-normalised float32 RGB (background at
    BACKGROUND_LEVEL); returns the same, in 0..255. Pixels brighter than the
    background carry no stain (OD 0) and come back as background.
    """
    white = BACKGROUND_LEVEL + 1.0
    od = np.maximum(-np.log((image + 1.0) / white), 0.0)
    total = od.sum(axis=-1).ravel()
    k = min(len(total) - 1, int(round(len(total) * STAIN_OD_PERCENTILE / 100.0)))
    ref = float(np.partition(total, k)[k])
    gain = float(np.clip(STAIN_OD_TARGET / max(ref, 1e-3), *STAIN_GAIN_LIMITS))
    out = white * np.exp(-od * gain) - 1.0
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def classifier_input(crop_rgb: np.ndarray, size: tuple[int, int] = CLASSIFIER_SIZE,
                     stain_norm: bool = False) -> np.ndarray:
    """Cell crop (any size, RGB uint8) -> classifier tensor (1, H, W, 3) float32.

    The background is estimated on the crop itself: the same rule for
    single-cell datasets and for crops cut from frames, from every pixel (a
    strided sample is a different sample once the crop is turned, which moved
    probabilities by up to 0.03). ``stain_norm`` is a property of the model
    (manifest: the classifier's ``preprocess``), as is ``size`` (only old
    training checkpoints differ from CLASSIFIER_SIZE).
    """
    resized = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA)
    x = normalise_background(resized, estimate_background(resized, max_side=max(size)))
    return (normalise_stain(x) if stain_norm else x)[None]


def model_input(net: str, rgb: np.ndarray, stain_norm: bool = False) -> np.ndarray:
    """The (1, H, W, 3) tensor one network takes for a whole image (calibration, parity, latency)."""
    return classifier_input(rgb, stain_norm=stain_norm) if net == "classifier" else detector_input(rgb)[0]


class FlatField:
    """Per-device blank-field correction (vignetting, lamp colour), applied per frame.

    Built once from a capture of an empty, in-focus slide area taken with the
    same camera settings (``[capture] flat_field`` in the config). The capture
    is blurred so dust does not print into every frame; the per-pixel gain is
    precomputed, so the per-frame cost is one multiply. The gain brings the blank
    to one grey at its mean brightness: it is the white reference too, so a warm
    or blue lamp (and its colour fringe towards the corners) is removed, not kept.
    """

    def __init__(self, blank_rgb: np.ndarray):
        blank = cv2.GaussianBlur(blank_rgb.astype(np.float32), (0, 0), 15)
        self.gain = (blank.mean() / np.maximum(blank, 1.0)).astype(np.float32)

    @classmethod
    def load(cls, path: str) -> "FlatField":
        try:
            return cls(read_rgb(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"flat-field image {path} cannot be used ({exc}); capture a blank field again "
                             "or remove [capture] flat_field from the config") from exc

    def apply(self, frame_rgb: np.ndarray) -> np.ndarray:
        if frame_rgb.shape != self.gain.shape:
            # another resolution than the blank capture: scale the gain map once
            self.gain = cv2.resize(self.gain, (frame_rgb.shape[1], frame_rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        out = frame_rgb.astype(np.float32) * self.gain
        return np.clip(out, 0, 255).astype(np.uint8)
