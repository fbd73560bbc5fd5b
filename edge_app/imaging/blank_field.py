"""Capture this device's blank field: the ``[capture] flat_field`` image the pipeline flat-fields with.

    python -m edge_app.imaging.blank_field --source v4l2:///dev/video0 --out /var/lib/wbc-counter/blank.png

The technician moves the slide to an empty, in-focus area (plasma only, no cells) with the lamp and
camera set as for counting. The per-pixel median of ``--frames`` frames is checked, then written
atomically (a temporary file renamed over the old one, so a failed capture never leaves a half-written
or missing blank behind). Refused, with what to do, when the field is too dark or burnt out, when it
has structure (red cells, debris: the correction would print them into every frame) or when the
shipped detector finds a leukocyte in it. Prints one JSON line: ``{"out", "sha256", "frames",
"mean_rgb", "corner_to_centre", "structure"}``; exit 0 when written, 1 when refused, 2 for a bad
source or path. Every new session then records the file's sha256 (``sessions.calibration``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_app import fsutil, paths
from edge_app.capture import CaptureError, open_source
from edge_app.config import ConfigError, QualityConfig, load_config
from edge_app.imaging import preprocess
from edge_app.imaging.quality import QualityGate, grey_small
from edge_app.model.bundle import ModelBundle, sha256_file

logger = logging.getLogger(__name__)

# High-pass contrast of the grey field (std of field minus its blur, over its mean). Plasma
# between cells measures about 0.003 on the shipped BCCD sample; a smear field with red cells 0.06.
MAX_STRUCTURE = 0.02


class BlankRefused(ValueError):
    """The captured field cannot serve as the blank (the message says what to do)."""


def median_field(source, frames: int) -> tuple[np.ndarray, int]:
    """Per-pixel median of up to ``frames`` frames (noise and a passing speck drop out)."""
    got = []
    with source:
        while len(got) < frames:
            frame = source.read()
            if frame is None:
                break
            if got and frame.image.shape != got[0].shape:
                raise CaptureError(f"frame size changed during the capture ({got[0].shape[:2]} to "
                                   f"{frame.image.shape[:2]}): keep the camera settings fixed and capture again")
            got.append(frame.image)
    if not got:
        raise CaptureError("the source gave no frame: check the camera cable, or the file")
    return np.median(np.stack(got), axis=0).astype(np.uint8), len(got)


def structure(rgb: np.ndarray) -> float:
    g = grey_small(rgb).astype(np.float32)
    return float((g - cv2.GaussianBlur(g, (0, 0), 8)).std() / max(float(g.mean()), 1.0))


def corner_to_centre(rgb: np.ndarray) -> float:
    """Mean brightness of the four corner patches over the centre patch (1.0 = no vignetting)."""
    g = cv2.GaussianBlur(grey_small(rgb).astype(np.float32), (0, 0), 5)
    h, w = g.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    corners = [g[:ph, :pw], g[:ph, -pw:], g[-ph:, :pw], g[-ph:, -pw:]]
    centre = g[h // 2 - ph // 2: h // 2 + ph // 2 + 1, w // 2 - pw // 2: w // 2 + pw // 2 + 1]
    return float(np.mean([c.mean() for c in corners]) / max(float(centre.mean()), 1.0))


def check_blank(rgb: np.ndarray, quality: QualityConfig, load_detector=None) -> dict:
    """Figures of the field; raises BlankRefused when it is not a usable blank. ``load_detector``
    (called only once the cheap checks pass) gives the detector for the leukocyte check, or None."""
    # exposure as the counting gate measures it (a blank has no edges, so its focus verdict is ignored)
    q = QualityGate(quality).assess(rgb)
    brightness, clipped = q.brightness, q.clipped
    if brightness < quality.min_brightness:
        raise BlankRefused(f"the field is too dark (mean grey {brightness:.0f}): open the iris or raise the lamp")
    if brightness > quality.max_brightness or clipped > quality.max_clipped:
        raise BlankRefused(f"the field is burnt out (mean grey {brightness:.0f}, {clipped:.0%} clipped): "
                           "lower the lamp or the exposure")
    s = structure(rgb)
    if s > MAX_STRUCTURE:
        raise BlankRefused(f"the field is not empty (structure {s:.3f} > {MAX_STRUCTURE}): move the slide to an "
                           "area with no cells (plasma only) and keep it in focus")
    detector = load_detector() if load_detector else None
    if detector is not None:
        cells = detector(rgb)
        if cells:
            raise BlankRefused(f"the detector finds {len(cells)} leukocyte(s) in the field: move to an empty area")
    return {"mean_rgb": [round(float(c), 1) for c in rgb.reshape(-1, 3).mean(axis=0)],
            "corner_to_centre": round(corner_to_centre(rgb), 3), "structure": round(s, 4)}


def write_blank(rgb: np.ndarray, out: Path) -> str:
    """Write atomically; the file is read back through the pipeline's own loader. Returns its sha256."""
    fsutil.make_dirs(out.parent)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode the blank for {out} as PNG")
    # temp file in the folder + rename (no planted link followed); read back by the pipeline's loader first
    fsutil.atomic_write(out, buf.tobytes(), what="blank", check=lambda tmp: preprocess.FlatField.load(str(tmp)))
    return sha256_file(out)


def _detector(cfg, data_dir=None):
    """The shipped detector as the kiosk runs it, or None (with a warning) when the model cannot load.

    ``data_dir`` is the kiosk's (``--data-dir``, else ``$WBC_DATA_DIR``...): on TensorRT the engine
    is the one ``selftest --build-engine`` built there (``edge_app.paths``)."""
    try:
        return ModelBundle.from_config(cfg, paths.data_dir(data_dir)).detector
    except Exception as exc:  # a broken model must not stop a blank capture; the structure check remains
        logger.warning("leukocyte check skipped: the model could not be loaded (%s)", exc)
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_app.imaging.blank_field", description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="camera or file URI, e.g. v4l2:///dev/video0")
    ap.add_argument("--out", type=Path, required=True, help="where to write the blank (.png)")
    ap.add_argument("--frames", type=int, default=15, help="frames whose median is the blank (default 15)")
    ap.add_argument("--config", default=None, help="the kiosk's config (capture size, quality limits, model)")
    ap.add_argument("--no-cell-check", action="store_true", help="skip the detector (the structure check stays)")
    ap.add_argument("--data-dir", default=None,
                    help="the kiosk's data dir, whose TensorRT engines the detector uses (default: $WBC_DATA_DIR "
                         "or ~/.local/share/wbc-counter)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out.suffix.lower() != ".png":
        print(f"blank_field: error: --out {args.out}: use a .png file (lossless)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        rgb, n = median_field(open_source(args.source, cfg.capture), max(1, args.frames))
        figures = check_blank(rgb, cfg.quality, None if args.no_cell_check else lambda: _detector(cfg, args.data_dir))
        digest = write_blank(rgb, args.out)
    except BlankRefused as exc:
        print(f"blank_field: refused: {exc}; nothing was written", file=sys.stderr)
        return 1
    except (CaptureError, ConfigError, OSError, ValueError) as exc:
        print(f"blank_field: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "sha256": digest, "frames": n, **figures}))
    print(f'set [capture] flat_field = "{args.out}" in the kiosk config', file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
