"""Measure the red-cell size the detector was trained on, and record it in the manifest.

    python -m scripts.training.scale_reference            # print the figures
    python -m scripts.training.scale_reference --write    # and store them in models/manifest.json

The detector's *train* frames (``scripts.training.splits``: BCCD, Chula and
TXL-PBC, the sources ``scripts.training.train`` draws from) are measured the way
a session measures its camera: consecutive runs of ``MEASURE_FRAMES`` frames of
one camera, each run's median red-cell diameter by the runtime's own
``edge_app.imaging.scale.rbc_diameter``, in detector-input pixels (the
letterbox to 320x240 of ``edge_app.imaging.preprocess``). Cameras are told
apart by source and, inside TXL-PBC, by frame size (its BCCD copies, Kaggle,
PBC and Raabin frames).

What is stored under ``models.detector.rbc_diameter_px``:
- ``lo``: the smallest camera's median (Chula's): the smallest cells the detector learnt;
- ``hi``: the largest camera's median, times 1/0.6: training's zoom window
  (``_random_frame_geometry``, 0.6 to 1 of the frame) enlarges cells by up to that;
- ``target``: where a camera outside [lo, hi] is brought; by default the median
  over all runs (the size the detector saw most), or ``--target``, chosen on the
  *val* frames with ``python -m scripts.training.eval_scale --split val --target T``
  (``models/EVALUATION.md``; recorded in ``target_chosen``);
- per camera: runs, median, 5th and 95th percentiles.
The manifest's model files are not touched, so their sha256 stay valid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge_app.imaging import preprocess
from edge_app.imaging.scale import MEASURE_FRAMES, detector_scale, rbc_diameter

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "models" / "manifest.json"
# training's zoom window keeps 0.6 to 1 of a frame's side (scripts.training.train._random_frame_geometry)
TRAIN_ZOOM_MIN = 0.6
TXL_CAMERAS = {(480, 640): "txl_pbc/bccd", (416, 416): "txl_pbc/kaggle", (575, 575): "txl_pbc/raabin",
               (363, 360): "txl_pbc/pbc", (369, 366): "txl_pbc/pbc"}


def detector_frames(split: str):
    """(camera, path) of every detector frame of one split, as the training cache takes them."""
    from scripts.training import data
    from scripts.training.splits import DATASETS, split_of

    for image in data._bccd_rows():
        if split_of("bccd", image) == split:
            yield "bccd", DATASETS / "bccd" / "images" / image
    for image, rows in data._chula_rows().items():
        if split_of("chula", image, rows[0]["slide"]) == split:
            yield "chula", DATASETS / "chula" / "images" / image
    for s, path, _ in data._txl_items()[0]:
        if s == split:
            yield "txl_pbc", path


def measure(split: str = "train", limit: int | None = None) -> dict:
    pending: dict[str, list] = {}
    runs: dict[str, list[float]] = {}
    for n, (source, path) in enumerate(detector_frames(split)):
        if limit and n >= limit:
            break
        rgb = preprocess.read_rgb(str(path))
        camera = TXL_CAMERAS.get(rgb.shape[:2], "txl_pbc/other") if source == "txl_pbc" else source
        frames = pending.setdefault(camera, [])
        frames.append(rgb)
        if len(frames) == MEASURE_FRAMES:
            d, cells, _ = rbc_diameter(frames)
            if cells >= 3:
                runs.setdefault(camera, []).append(d * detector_scale(rgb.shape))
            pending[camera] = []
    cameras = {c: {"runs": len(v), "median": round(float(np.median(v)), 2),
                   "p5": round(float(np.percentile(v, 5)), 2), "p95": round(float(np.percentile(v, 95)), 2)}
               for c, v in sorted(runs.items())}
    medians = [c["median"] for c in cameras.values()]
    return {"lo": round(min(medians), 2), "hi": round(max(medians) / TRAIN_ZOOM_MIN, 2),
            "target": round(float(np.median(np.concatenate([np.array(v) for v in runs.values()]))), 2),
            "frames_per_run": MEASURE_FRAMES, "split": split, "cameras": cameras,
            "measured_by": "python -m scripts.training.scale_reference (edge_app.imaging.scale.rbc_diameter, "
                           "detector-input pixels after the letterbox to 320x240)"}


def write(reference: dict, manifest: Path = MANIFEST) -> None:
    """Store the reference in the manifest, leaving every other key (and every file hash) as it is."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["models"]["detector"]["rbc_diameter_px"] = reference
    manifest.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="store the reference in models/manifest.json")
    ap.add_argument("--limit", type=int, default=None, help="first N frames only (a quick look)")
    ap.add_argument("--target", type=float, default=None,
                    help="the target chosen on val by scripts.training.eval_scale (default: the train median)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ref = measure("train", args.limit)
    if args.target is not None:
        ref["target_chosen"] = {"train_median": ref["target"], "target": args.target,
                                "how": "python -m scripts.training.eval_scale --split val --per-camera 50 --target T"}
        ref["target"] = args.target
    print(json.dumps(ref, indent=1))
    if args.write:
        write(ref)
        logger.info("written to %s", MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
