"""Reference outputs for the start-up self-test: real images through the FP32 model.

    python -m scripts.training.make_reference [--model-dir models] [--runtime onnx|tflite]

Picks a small, fixed set of real images (two confidently classified PBC
crops per leukocyte class, CC BY 4.0, and four BCCD fields with at least one
detection, MIT), copies them to ``<model dir>/reference/`` with an
ATTRIBUTION.md, runs them through the FP32 model (the ONNX the TensorRT
engine is built from, via onnxruntime; or the FP32 TFLite) with the app's
own ``Detector`` / ``Classifier`` code, and writes ``reference.json``. The
kiosk's self-test runs the same images through its active backend (INT8
engine or INT8 TFLite) and compares. Rerun it for every new model version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from edge_app.backends.base import Backend, BackendError, TensorSpec
from edge_app.imaging import preprocess
from edge_app.labels import CLASS_INDEX
from edge_app.model.bundle import Classifier, Detector, Manifest
from edge_app.selftest import REFERENCE_DIR, REFERENCE_FILE
from scripts.training.splits import split_of

logger = logging.getLogger(__name__)

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
PBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CROPS_PER_CLASS = 2
FRAMES = 4
# Only crops the FP32 model gets right with this confidence: a reference that
# sits on a decision boundary would flip under INT8 and prove nothing.
MIN_CONFIDENCE = 0.6  # well clear of a tie between two classes
CANDIDATES_PER_CLASS = 80
DETECT_THRESHOLD = 0.35
ATTRIBUTION = """# Self-test reference images: attribution

Copied unchanged by `python -m scripts.training.make_reference`.

- `crop_*`: PBC dataset, CC BY 4.0 - Acevedo et al., 'A dataset of microscopic peripheral blood cell
  images for development of automatic recognition systems', Data in Brief 30 (2020); via
  AuralinACC/Blood-Cell-Classification (downscaled to 128x128).
- `frame_*`: BCCD Dataset, MIT licence - Shenggan/BCCD_Dataset.
"""


class OnnxFP32Backend(Backend):
    """onnxruntime on the shipped ONNX (a development tool; the kiosk never needs onnxruntime)."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, net: str):
        import onnxruntime as ort

        entry = manifest.entry(net)
        self._session = ort.InferenceSession(str(manifest.file(net, "onnx")), providers=["CPUExecutionProvider"])
        self._spec = TensorSpec(entry["input"]["name"], tuple(entry["input"]["shape"]))
        self._outputs = [o["name"] for o in entry["outputs"]]

    @property
    def input_spec(self) -> TensorSpec:
        return self._spec

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(y, np.float32) for y in self._session.run(self._outputs, {self._spec.name: x})]


def fp32_backend(manifest: Manifest, net: str, runtime: str) -> Backend:
    if runtime == "onnx":
        return OnnxFP32Backend(manifest, net)
    from edge_app.backends.tflite import TFLiteBackend

    return TFLiteBackend(manifest.file(net, "tflite_fp32"), manifest.output_shapes(net))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pick_crops(classifier: Classifier, pbc_dir: Path) -> list[tuple[Path, str, np.ndarray]]:
    chosen = []
    for label in PBC_CLASSES:
        # training-split crops only: nothing shipped comes from a test split
        files = [f for f in sorted((pbc_dir / label).glob("*.jpg"))
                 if split_of("pbc", f"{label}/{f.name}") == "train"]
        if not files:
            raise SystemExit(f"no PBC crops in {pbc_dir / label}")
        step = max(1, len(files) // CANDIDATES_PER_CLASS)  # spread over the class, not one scan session
        picked = 0
        for path in files[::step]:
            probs = classifier(preprocess.read_rgb(str(path))).probs
            if int(np.argmax(probs)) == CLASS_INDEX[label] and float(np.max(probs)) >= MIN_CONFIDENCE:
                chosen.append((path, label, probs))
                picked += 1
                if picked == CROPS_PER_CLASS:
                    break
        if picked < CROPS_PER_CLASS:
            raise SystemExit(f"the FP32 model classifies too few {label} crops confidently; check the model")
    return chosen


def pick_frames(detector: Detector, bccd_dir: Path) -> list[tuple[Path, list]]:
    chosen = []
    files = [f for f in sorted(bccd_dir.glob("*.jpg")) if split_of("bccd", f.name) == "train"]
    for path in files[:: max(1, len(files) // 40)]:
        found = detector(preprocess.read_rgb(str(path)))
        if found:
            chosen.append((path, found))
            if len(chosen) == FRAMES:
                return chosen
    raise SystemExit(f"the FP32 detector finds cells in fewer than {FRAMES} BCCD frames; check the model")


def make_reference(model_dir: Path, datasets: Path, runtime: str = "onnx") -> dict:
    manifest = Manifest.load(model_dir)
    out = model_dir / REFERENCE_DIR
    detector = Detector.for_manifest(fp32_backend(manifest, "detector", runtime), manifest, DETECT_THRESHOLD)
    classifier = Classifier.for_manifest(fp32_backend(manifest, "classifier", runtime), manifest)
    crops = pick_crops(classifier, datasets / "pbc")
    frames = pick_frames(detector, datasets / "bccd" / "images")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    made_from = "onnx" if runtime == "onnx" else "tflite_fp32"
    ref = {"model_version": manifest.version, "detect_threshold": DETECT_THRESHOLD,
           "made_with": {"runtime": runtime, "files": {net: manifest.entry(net)["files"][made_from]
                                                      for net in ("detector", "classifier")}},
           "classifier": [], "detector": []}
    for path, label, probs in crops:
        name = f"crop_{label}_{path.name}"
        shutil.copy2(path, out / name)
        ref["classifier"].append({"file": name, "source": "pbc", "label": label, "sha256": _sha(out / name),
                                  "probs": [round(float(p), 6) for p in probs]})
    for path, found in frames:
        name = f"frame_{path.name}"
        shutil.copy2(path, out / name)
        ref["detector"].append({"file": name, "source": "bccd", "sha256": _sha(out / name),
                                "boxes": [[round(float(v), 2) for v in d.box] for d in found],
                                "scores": [round(d.score, 4) for d in found]})
    (out / REFERENCE_FILE).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION, encoding="utf-8")
    return ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("models"))
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--runtime", choices=("onnx", "tflite"), default="onnx")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ref = make_reference(args.model_dir, args.datasets, args.runtime)
    except BackendError as exc:
        print(f"make_reference: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(ref['classifier'])} crops + {len(ref['detector'])} frames -> {args.model_dir / REFERENCE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
