"""Frame single-cell photos the way the kiosk frames a detected cell.

The kiosk never classifies a whole photo: it cuts a square of 1.4 times the
detector box's longest side around each detected cell
(``edge_app.imaging.preprocess.cell_crop``), so the cell fills about 70% of the crop.
The single-cell datasets are framed by their own cameras: a PBC cell fills
about 40% of its photo, a Raabin cell about 55%. A classifier trained and
scored only on the photos as stored therefore meets, in the kiosk, a framing
it was never trained or measured on (CHANGELOG.md, 1.5.0).

This module runs the shipped detector on every crop-dataset photo of the
classifier cache and keeps the kiosk's square around the detected cell nearest
the photo's centre (``edge_app.imaging.framing``, which ``wbc-counter classify`` runs
too), so that training can frame its crops that way and the evaluation can
score crops exactly as the kiosk cuts them:

    python -m scripts.training.kiosk_framing            # writes .cache/kiosk_frames.npz
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import framing  # noqa: E402
from edge_app.model.bundle import Detector, Manifest  # noqa: E402

logger = logging.getLogger(__name__)

CROP_SOURCES = ("pbc", "raabin", "tecom")  # photos of one cell; the frame sources are cut from boxes already
FRAMES = ROOT / ".cache" / "kiosk_frames.npz"


def shipped_detector(model_dir: Path = ROOT / "models") -> Detector:
    """The INT8 TFLite detector the CPU kiosk runs."""
    from edge_app.backends.tflite import TFLiteBackend

    manifest = Manifest.load(model_dir)
    backend = TFLiteBackend(manifest.file("detector", "tflite_int8"), manifest.output_shapes("detector"))
    return Detector.for_manifest(backend, manifest)


def augment_frame(square) -> tuple[float, float, float] | None:
    """``augment.crop_geometry``'s ``frame`` (centre x, centre y, side) for a square, or None."""
    if square is None or not np.all(np.isfinite(square)):
        return None
    x1, y1, x2, y2 = (float(v) for v in square)
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1


def build(images: np.ndarray, sources: np.ndarray, detector: Detector) -> np.ndarray:
    """(N, 4) kiosk squares aligned with the classifier cache; NaN where none applies."""
    out = np.full((len(images), 4), np.nan, np.float32)
    for i in np.nonzero(np.isin(sources, CROP_SOURCES))[0]:
        sq = framing.kiosk_square(detector, images[i])
        if sq is not None:
            out[i] = sq
    return out


def load(keys: np.ndarray) -> np.ndarray:
    """The cached squares, checked against the classifier cache they belong to."""
    if not FRAMES.is_file():
        raise SystemExit(f"{FRAMES} missing: run `python -m scripts.training.kiosk_framing` first")
    with np.load(FRAMES) as z:
        if len(z["keys"]) != len(keys) or not np.array_equal(z["keys"], keys):
            raise SystemExit(f"{FRAMES} belongs to another classifier cache: "
                             "run `python -m scripts.training.kiosk_framing`")
        return z["squares"]


def main(argv=None) -> int:
    from scripts.training import data

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    d = data.load("cls")
    squares = build(d["images"], d["sources"], shipped_detector(args.model_dir))
    for src in CROP_SOURCES:
        m = d["sources"] == src
        found = np.isfinite(squares[m, 0])
        sides = squares[m][found, 2] - squares[m][found, 0]
        zoom = d["images"].shape[1] / sides if found.any() else np.array([np.nan])
        logger.info("%s: kiosk square for %d of %d photos; zoom to kiosk framing: median %.2f",
                    src, found.sum(), m.sum(), float(np.median(zoom)))
    np.savez(FRAMES, squares=squares, keys=d["keys"], sources=d["sources"])
    logger.info("wrote %s", FRAMES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
