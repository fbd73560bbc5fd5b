"""Lever study: test-time stain referencing from a session's own statistics.

A left-out camera (Chula) is pale: the 99th percentile of a crop's summed
optical density is about 1.1 there against about 4.0 on PBC and Raabin. A
kiosk could learn that from the cells of the running session (no batch-norm
update, so it survives TensorRT) and scale every crop's OD by one session
gain, keeping the differences *between* cells that a per-crop stretch
(``preprocess.normalise_stain``) throws away. This script measures it with a
classifier trained without the source, on every crop of that source and on
Tecom (never trained on by any model):

    python -m scripts.research.session_stain runs/loso_chula_e34/classifier.pt chula tecom

The reference OD is the median over the sources the checkpoint trained on
(400 seeded crops each); a session's OD is the median over its crops.
"Half" applies the square root of the gain.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from scripts.training import data  # noqa: E402
from scripts.training.evaluate import TorchClassifier, all_source_crops, classification_metrics  # noqa: E402

logger = logging.getLogger("session_stain")
TRAINED = ("pbc", "raabin", "chula", "bccd")
WHITE = preprocess.BACKGROUND_LEVEL + 1.0


def optical_density(x: np.ndarray) -> np.ndarray:
    return np.maximum(-np.log((x + 1.0) / WHITE), 0.0)


def crop_od99(x: np.ndarray) -> float:
    """99th percentile of the summed OD of one background-normalised crop."""
    return float(np.percentile(optical_density(x).sum(-1), preprocess.STAIN_OD_PERCENTILE))


def with_gain(x: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(WHITE * np.exp(-optical_density(x) * gain) - 1.0, 0, 255).astype(np.float32)


def inputs(clf: TorchClassifier, crops) -> list[np.ndarray]:
    return [preprocess.classifier_input(c, clf.size)[0] for c in crops]


def reference_od(clf: TorchClassifier, left_out: str) -> float:
    d, rng, meds = data.load("cls"), np.random.default_rng(0), []
    for src in TRAINED:
        if src == left_out:
            continue
        idx = np.nonzero((d["sources"] == src) & (d["splits"] == "train") & (d["labels"] >= 0))[0]
        pick = rng.choice(idx, min(400, len(idx)), replace=False)
        meds.append(np.median([crop_od99(x) for x in inputs(clf, d["images"][pick])]))
    return float(np.median(meds))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("sources", nargs="+", help="first: the source the checkpoint left out; then other unseen ones")
    ap.add_argument("--views", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    clf = TorchClassifier(args.checkpoint)
    ref = reference_od(clf, args.sources[0])
    print(f"reference OD99 (trained sources): {ref:.2f}")
    print("| source | crops | session OD99 | gain | five-class: none | session gain | half gain |")
    print("|---|---|---|---|---|---|---|")
    for src in args.sources:
        crops, truth = all_source_crops(src)
        xs = inputs(clf, crops)
        session = float(np.median([crop_od99(x) for x in xs]))
        gain = ref / session
        variants = (xs, [with_gain(x, gain) for x in xs], [with_gain(x, np.sqrt(gain)) for x in xs])
        accs = [classification_metrics(truth, clf.run_views(np.stack(v), args.views))["five_class_accuracy"]
                for v in variants]
        print(f"| {src} | {int((truth < 5).sum())} | {session:.2f} | {gain:.2f} | "
              + " | ".join(f"{a:.3f}" for a in accs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
