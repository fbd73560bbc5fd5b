"""How tight the shipped detector's boxes are, per camera and split.

    python -m scripts.box_fit models --splits train val --json /tmp/box_fit.json

For each frame camera (BCCD, Chula, TXL-PBC) and each split asked for, the
INT8 detector (decoded as the manifest says) gives AP at IoU 0.5 and 0.75 and,
over the labelled cells matched by a detection at IoU >= 0.3, the median and
quartiles of the ratio of the detected box's longer side to the labelled one's.
A ratio well above 1 on one camera only is a box-regression bias, not a miss.
Train figures say whether the network fits its own frames; they never choose
a model (``scripts.select_model`` scores val only, and nothing here reads test
unless asked).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_app.inference import Manifest  # noqa: E402
from scripts import data, eval_metrics, evaluate  # noqa: E402

logger = logging.getLogger(__name__)

CAMERAS = ("bccd", "chula", "txl_pbc")
MATCH_IOU = 0.3  # loose enough to pair a 1.4x too large box (IoU about 0.5) with its cell


def side_ratios(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray]) -> np.ndarray:
    """Detected / labelled longer side for each labelled cell whose best detection has IoU >= MATCH_IOU."""
    out = []
    for (boxes, _), gt in zip(dets, gts):
        if not len(gt) or not len(boxes):
            continue
        iou = eval_metrics.iou_matrix(gt, boxes)
        for g, row in zip(gt, iou):
            j = int(np.argmax(row))
            if row[j] >= MATCH_IOU:
                b = boxes[j]
                out.append(max(b[2] - b[0], b[3] - b[1]) / max(g[2] - g[0], g[3] - g[1], 1e-6))
    return np.asarray(out, np.float64)


def box_fit(model_dir: Path, splits: tuple[str, ...]) -> dict:
    manifest = Manifest.load(model_dir)
    det = evaluate.detector_runners(manifest)["tflite_int8"]
    d = data.load("det")
    res: dict = {"version": manifest.version}
    for split in splits:
        for cam in CAMERAS:
            ix = np.nonzero((d["sources"] == cam) & (d["splits"] == split))[0]
            if not len(ix):
                continue
            dets = [evaluate.detect_arrays(det, d["frames"][i]) for i in ix]
            gts = [d["boxes"][i].reshape(-1, 4) for i in ix]
            r = side_ratios(dets, gts)
            row = dict(eval_metrics.ap50_ap75(dets, gts), frames=int(len(ix)), cells=int(sum(map(len, gts))),
                       matched=int(len(r)))
            if len(r):
                row["side_ratio_quartiles"] = [float(q) for q in np.percentile(r, [25, 50, 75])]
            res[f"{cam}/{split}"] = row
            logger.info("%s %s: %s", cam, split, {k: (round(v, 3) if isinstance(v, float) else v)
                                                   for k, v in row.items()})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val", "test"))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = box_fit(args.model_dir, tuple(args.splits))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
