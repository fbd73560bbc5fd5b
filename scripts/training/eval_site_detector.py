"""The detector side of a site profile: k labelled frames of one camera, scored on that camera's other frames.

    python -m scripts.training.eval_site_detector                 # test split, 10 draws
    python -m scripts.training.eval_site_detector --draws 3 --cameras chula

For each camera of the detector's held-out frames (``scripts.training.eval_scale.held_out_frames``: BCCD,
Chula, the TXL-PBC cameras), and for two magnifications:

- ``1x``: the frames as they are;
- ``fifth``: fields made of 5 x 5 of the camera's real frames shrunk by 5 (``eval_scale.fifth_field``),
  the detector at the scale measured from the labelled fields (what the profile records).

Each draw splits the camera's frames into a labelled part and a test part (Chula: by slide, so the test
frames come from slides none of whose frames was labelled); k frames (or fields) of the labelled part are
the site's verified frames. The profile's threshold is fitted on them exactly as ``wbc-counter adapt``
fits it (``edge_app.site.detection.threshold_record``: F1-best grid threshold, kept only if not worse on
its own held-back frames), and both thresholds are scored on the test part: recall, precision and F1 at
IoU 0.5. k = 0 is the shipped threshold. Reported as mean +- sd over the draws, with the INT8 TFLite
detector (torch-free).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys

import numpy as np

from edge_app.imaging.scale import ScaleReference, measure_scale
from edge_app.model.bundle import Detector, Manifest, create_backend
from edge_app.site import detection
from scripts.training.eval_scale import SHRINK, fifth_field, held_out_frames

logger = logging.getLogger(__name__)

K_FRAMES = (5, 10, 20)
K_FIELDS = (4, 8)
TEST_FIELDS = 6


def _slide_of(camera: str, name: str) -> str:
    return name.split("_")[0] if camera == "chula" else name


def _split(rng, camera: str, items: list) -> tuple[list, list]:
    """Labelled part and test part: half the slides (Chula) or half the frames each."""
    groups = sorted({_slide_of(camera, it[2]) for it in items})
    rng.shuffle(groups)
    half = set(groups[:max(1, len(groups) // 2)])
    lab = [it for it in items if _slide_of(camera, it[2]) in half]
    test = [it for it in items if _slide_of(camera, it[2]) not in half]
    return lab, test


def _frames(items) -> list[detection.LabelledFrame]:
    return [detection.LabelledFrame(name, rgb, boxes) for rgb, boxes, name in items]


def _fields(rng, items, n: int) -> list[detection.LabelledFrame]:
    per = SHRINK * SHRINK
    out = []
    for k in range(n):
        pick = [items[i] for i in rng.choice(len(items), per, replace=len(items) < per)]
        img, boxes = fifth_field([(rgb, b) for rgb, b, _ in pick], SHRINK)
        out.append(detection.LabelledFrame(f"field{k}", img, boxes))
    return out


def _draw(detector, ref, rng, camera, items, fifth: bool) -> dict:
    lab, test = _split(rng, camera, items)
    ks = K_FIELDS if fifth else K_FRAMES
    if fifth:
        labelled = _fields(rng, lab, max(ks))
        test_frames = _fields(rng, test, TEST_FIELDS)
        detector.scale = measure_scale([f.image_rgb for f in labelled], ref).factor
    else:
        order = rng.permutation(len(lab))
        labelled = [_frames(lab)[i] for i in order[:max(ks)]]
        test_frames = _frames(test)
        detector.scale = 1.0
    shipped = detector.threshold
    dets_lab = detection.detections(detector, labelled)
    dets_test = detection.detections(detector, test_frames)
    out = {"k0": {**detection.score(dets_test, test_frames, shipped), "threshold": shipped}}
    for k in ks:
        if k > len(labelled):
            continue
        rec = detection.threshold_record(dets_lab[:k], labelled[:k], shipped)
        out[f"k{k}"] = {**detection.score(dets_test, test_frames, rec["value"]), "threshold": rec["value"],
                        "fitted": rec["fitted"]}
    detector.scale = 1.0
    return out


def _summary(draws: list[dict]) -> dict:
    out = {}
    for key in draws[0]:
        rows = [d[key] for d in draws if key in d]
        out[key] = {m: f"{np.mean([r[m] for r in rows]):.3f} +- {np.std([r[m] for r in rows]):.3f}"
                    for m in ("recall", "precision", "f1", "threshold")}
        out[key]["draws"] = len(rows)
        if "fitted" in rows[0]:
            out[key]["fitted"] = sum(bool(r["fitted"]) for r in rows)
    return out


def evaluate(split: str = "test", draws: int = 10, cameras: list[str] | None = None, threads: int = 2,
             seed: int = 0) -> dict:
    manifest = Manifest.load()
    ref = ScaleReference.from_manifest(manifest.data)
    detector = Detector.for_manifest(create_backend(manifest, "detector", "tflite", "int8", threads), manifest)
    groups: dict[str, list] = {}
    for camera, rgb, boxes, name in held_out_frames(split, names=True):
        if not cameras or camera in cameras:
            groups.setdefault(camera, []).append((rgb, boxes, name))
    out: dict = {"split": split, "draws": draws, "cameras": {}}
    for camera, items in sorted(groups.items()):
        items = [it for it in items if it[0].shape == items[0][0].shape]
        if len(items) < max(K_FRAMES):
            logger.info("%s: %d frames, too few for the protocol; skipped", camera, len(items))
            continue
        res = {}
        for fifth in (False, True):
            rng = np.random.default_rng(seed)
            runs = [_draw(detector, ref, rng, camera, items, fifth) for _ in range(draws)]
            res["fifth" if fifth else "1x"] = _summary(runs)
        out["cameras"][camera] = {"frames": len(items), **res}
        logger.info("%s: %s", camera, json.dumps(out["cameras"][camera]))
    out["cpu"] = platform.processor() or platform.machine()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--cameras", nargs="*", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(evaluate(args.split, args.draws, args.cameras, args.threads), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
