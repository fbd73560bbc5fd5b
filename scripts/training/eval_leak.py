"""How much the copies in the old splits flattered a detector (a study; scripts/research/README.md).

    python -m scripts.training.eval_leak                   # the detector in models/ (det2 until 1.7.0)

Scores the INT8 detector of ``--model-dir`` on the *new* test frames of BCCD
and TXL-PBC (``scripts.training.splits`` with ``split_groups.json``), in two parts:
frames of which det2 trained on the frame itself or a copy ("seen"), and the
rest ("clean"). det2's training split is rebuilt from the rule it was trained
with until 1.6.0: TXL-PBC's own folders, except a frame whose 16x12 mean hash
equalled a BCCD frame's, which took that frame's split. Only meaningful for
det2: a detector trained on the new splits has seen no test frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.model.bundle import Manifest  # noqa: E402
from scripts.training import data  # noqa: E402
from scripts.training.evaluate import MODELS, THRESHOLD, detector_runners, eval_detectors  # noqa: E402
from scripts.training.splits import DATASETS, GROUPS_FILE, split_of  # noqa: E402

logger = logging.getLogger("eval_leak")


def _old_hash(img: np.ndarray) -> bytes:
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (16, 12), interpolation=cv2.INTER_AREA)
    return (g > g.mean()).tobytes()


def old_splits() -> dict[tuple[str, str], str]:
    """(source, key) -> the split det2 trained with, for every BCCD and TXL-PBC frame."""
    bccd = {_old_hash(data._read(p)): split_of("bccd", p.name, raw=True)
            for p in sorted((DATASETS / "bccd" / "images").glob("*.jpg"))}
    out = {("bccd", p.name): split_of("bccd", p.name, raw=True)
           for p in sorted((DATASETS / "bccd" / "images").glob("*.jpg"))}
    for folder in data.SPLITS:
        for p in sorted((DATASETS / "txl_pbc" / "images" / folder).glob("*.jpg")):
            out[("txl_pbc", f"{folder}/{p.name}")] = bccd.get(_old_hash(data._read(p)), folder)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=MODELS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    old = old_splits()
    group_of = {(m["source"], m["key"]): [(n["source"], n["key"]) for n in g["members"]]
                for g in json.loads(GROUPS_FILE.read_text())["groups"] for m in g["members"]}
    d = data.load("det")
    sets: dict[str, list] = {}
    for src in ("bccd", "txl_pbc"):
        for i in np.nonzero((d["sources"] == src) & (d["splits"] == "test"))[0]:
            key = (src, str(d["keys"][i]))
            seen = any(old.get(m) == "train" for m in group_of.get(key, [key]))  # photos: never detector data
            item = (d["frames"][i], d["boxes"][i].reshape(-1, 4))
            sets.setdefault(f"{src} {'seen' if seen else 'clean'}", []).append(item)
            sets.setdefault(f"{src} all", []).append(item)
    det = {"tflite_int8": detector_runners(Manifest.load(args.model_dir))["tflite_int8"]}
    res = eval_detectors(det, sets, THRESHOLD)
    print("| test frames | frames | AP50 | recall@0.5 |\n|---|---|---|---|")
    for name in sorted(res):
        r = res[name]["tflite_int8"]
        print(f"| {name} | {len(sets[name])} | {r['ap50']:.3f} | {r['recall50']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
