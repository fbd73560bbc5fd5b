"""Build the shipped calibration set under ``calibration/`` (training data only).

    python -m scripts.training.make_calibration

Only MIT / CC BY sources are shipped: PBC crops (CC BY 4.0), BCCD and Chula
frames (MIT), all from their *train* splits (``scripts.training.splits``), plus crops cut
from those frames with the runtime's ``preprocess.cell_crop``. Images are
stored as raw camera pixels (JPEG, before preprocessing): the INT8 TFLite
quantiser, the Q/DQ ONNX and the TensorRT entropy calibrator all run them
through ``edge_app.imaging.preprocess`` themselves, exactly as the kiosk does.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from scripts.training.splits import DATASETS, split_of  # noqa: E402

OUT = ROOT / "calibration"
LICENCES = {
    "pbc": "CC BY 4.0 - Acevedo et al., 'A dataset of microscopic peripheral blood cell images for development of "
           "automatic recognition systems', Data in Brief 30 (2020); via AuralinACC/Blood-Cell-Classification",
    "bccd": "MIT - BCCD Dataset, Shenggan/BCCD_Dataset (images, boxes)",
    "chula": "MIT - Chula RBC/WBC dataset, singgihbekti/WBC_Dataset (Chulalongkorn University)",
}
PBC_PER_CLASS = 20
FRAMES_PER_SOURCE = 60
FRAME_CROPS_PER_SOURCE = 40
SEED = 0


def _write(path: Path, rgb: np.ndarray, max_side: int | None = None) -> None:
    if max_side and max(rgb.shape[:2]) > max_side:
        s = max_side / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> int:
    rng = np.random.default_rng(SEED)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "crops").mkdir(parents=True)
    (OUT / "frames").mkdir(parents=True)
    entries = {"crops": [], "frames": []}

    with open(DATASETS / "pbc" / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f) if split_of("pbc", r["image"]) == "train"]
    for label in sorted({r["label"] for r in rows}):
        pick = [r for r in rows if r["label"] == label]
        for r in rng.choice(pick, PBC_PER_CLASS, replace=False):
            name = f"pbc_{Path(r['image']).name}"
            shutil.copy(DATASETS / "pbc" / r["image"], OUT / "crops" / name)
            entries["crops"].append({"file": f"crops/{name}", "source": "pbc", "origin": r["image"]})

    for source in ("bccd", "chula"):
        by_image: dict[str, list[dict]] = {}
        with open(DATASETS / source / "boxes.csv") as f:
            for r in csv.DictReader(f):
                by_image.setdefault(r["image"], []).append(r)
        train = sorted(i for i, rs in by_image.items() if split_of(source, i, rs[0].get("slide")) == "train")
        frames = rng.choice(train, FRAMES_PER_SOURCE, replace=False)
        for image in frames:
            rgb = preprocess.read_rgb(str(DATASETS / source / "images" / image))
            name = f"{source}_{image}"
            _write(OUT / "frames" / name, rgb, max_side=640)
            entries["frames"].append({"file": f"frames/{name}", "source": source, "origin": f"images/{image}"})
        wbc = [(i, r) for i in train for r in by_image[i] if r["cell"] == "WBC"]
        for k in rng.choice(len(wbc), min(FRAME_CROPS_PER_SOURCE, len(wbc)), replace=False):
            image, r = wbc[k]
            rgb = preprocess.read_rgb(str(DATASETS / source / "images" / image))
            crop = preprocess.cell_crop(rgb, [float(r[c]) for c in ("x1", "y1", "x2", "y2")])
            name = f"{source}_{Path(image).stem}_{k}.jpg"
            _write(OUT / "crops" / name, crop, max_side=160)
            entries["crops"].append({"file": f"crops/{name}", "source": source, "origin": f"images/{image}"})

    manifest = {
        "purpose": "INT8 calibration (TFLite, Q/DQ ONNX, TensorRT entropy calibrator); training splits only",
        "preprocessing": "raw RGB camera pixels; run edge_app.imaging.preprocess.classifier_input / detector_input",
        "seed": SEED,
        "licences": LICENCES,
        **entries,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1))
    lines = ["# Calibration set: attribution", "",
             "Real smear images drawn from the *training* splits of these sources (see manifest.json for each",
             "file's origin). Built by `python -m scripts.training.make_calibration`.", ""]
    lines += [f"- **{k}**: {v}" for k, v in LICENCES.items()]
    (OUT / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")
    print(f"calibration set: {len(entries['crops'])} crops, {len(entries['frames'])} frames in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
