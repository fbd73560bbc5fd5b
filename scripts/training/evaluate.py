"""Evaluate the shipped models per source -> ``models/EVALUATION.md`` + PNG plots.

    python -m scripts.training.evaluate                       # shipped models/, all test splits
    python -m scripts.training.evaluate --loso runs/loso_chula/classifier.pt:chula --levers runs/levers runs/levers128
    python -m scripts.training.evaluate --keep-studies  # new model, same LOSO/lever rows (their runs are not shipped)

Every figure names its split (``scripts/training/splits.py``); nothing here is used to
choose a model. The classifier is run through the product's own path
(``edge_app.imaging.preprocess`` + ``edge_app.model.bundle`` on TFLite FP32/INT8, and ONNX
Runtime for the FP32 and Q/DQ ONNX), so the numbers are the kiosk's numbers.

- classifier: each test crop as ``wbc-counter classify`` sees it (the
  detector of the same precision finds the cell and the kiosk's square is cut
  around it, ``edge_app.imaging.framing``): five-class accuracy (truth in the five
  classes; a prediction of "other" counts as wrong), macro-F1, per-class
  precision/recall/F1, one-vs-rest AUC, confusion matrix; INT8 vs FP32 vs Q/DQ
  side by side (the Q/DQ ONNX run node by node, as TensorRT computes it, the
  same on every CPU); Gaussian noise N = I + G*alpha, alpha 0.05..0.35, on PBC
  test crops (the noise is added to the image, then the cell is framed);
- detector: AP50 and recall@0.5 on held-out frames of each frame source;
- end to end on held-out Chula slides: a cell is right when a detection
  matches its box (IoU >= 0.5) *and* carries its label;
- framing: INT8 on every test and val crop as given (``classify --as-given``)
  beside the kiosk's framing of its cell (``classify``);
- leave-one-source-out and lever study from PyTorch checkpoints (``--loso``,
  ``--levers``).

This module runs the models on the data; the scoring functions are in
``scripts.training.eval_metrics`` and the report writer in ``scripts.training.eval_report``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.config import ModelConfig  # noqa: E402
from edge_app.imaging import framing, preprocess  # noqa: E402
from edge_app.labels import CLASSES  # noqa: E402
from edge_app.model.bundle import Classifier, Detector, Manifest, sha256_file  # noqa: E402
from scripts.training import augment, data, kiosk_framing, qdq  # noqa: E402
from scripts.training.eval_metrics import (  # noqa: E402, F401 (re-exported: select_model and tests score with these)
    ALPHAS,
    TRAINED_SOURCES,
    average_precision,
    classification_metrics,
    iou_matrix,
    ovr_auc,
    pooled_five,
)
from scripts.training.eval_report import plot_confusions, plot_noise, write_report  # noqa: E402
from scripts.training.splits import DATASETS, split_of  # noqa: E402

logger = logging.getLogger("evaluate")
MODELS = ROOT / "models"
# the runtime's default detection score, so the report scores what the kiosk counts
THRESHOLD = ModelConfig.model_fields["detect_threshold"].default
FRAMING_SOURCES = ("pbc", "raabin", "tecom", "chula", "bccd")


# ------------------------------------------------------------------ runners
class OnnxNet:
    """The Q/DQ ONNX with the Backend calling convention, run node by node as TensorRT computes it
    (``scripts.training.qdq.session``), so its figures are the same on every CPU."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 2):
        self.sess = qdq.session(path, threads)
        self.inp = self.sess.get_inputs()[0].name

    def infer(self, x):
        return [np.asarray(y, np.float32) for y in self.sess.run(None, {self.inp: x.astype(np.float32)})]

    def close(self):
        self.sess = None


def classifier_runners(manifest: Manifest) -> dict:
    from edge_app.backends.tflite import TFLiteBackend

    shapes, views = manifest.output_shapes("classifier"), manifest.tta_views
    int8 = TFLiteBackend(manifest.file("classifier", "tflite_int8"), shapes)
    runners = {
        "tflite_fp32": Classifier.for_manifest(TFLiteBackend(manifest.file("classifier", "tflite_fp32"), shapes),
                                               manifest),
        "tflite_int8": Classifier.for_manifest(int8, manifest),
        "onnx_qdq": Classifier.for_manifest(OnnxNet(manifest.file("classifier", "onnx_qdq")), manifest),
    }
    if views > 1:  # the same INT8 model on the crop as seen, to show what the extra views add
        runners["tflite_int8_1view"] = Classifier(int8, 1, manifest.stain_norm)
    return runners


def eval_tta_val(manifest: Manifest) -> dict:
    """INT8 five-class accuracy on the *val* splits per number of views: how tta_views is chosen."""
    from edge_app.backends.tflite import TFLiteBackend

    d = data.load("cls")
    backend = TFLiteBackend(manifest.file("classifier", "tflite_int8"), manifest.output_shapes("classifier"))
    res = {}
    for views in (1, 2, 4, 8):
        clf, hits, row = Classifier(backend, views, manifest.stain_norm), [], {}
        for src in ("pbc", "raabin", "chula", "bccd"):
            m = (d["sources"] == src) & (d["splits"] == "val") & (d["labels"] >= 0) & (d["labels"] < 5)
            h = run_classifier(clf, list(d["images"][m])).argmax(1) == d["labels"][m]
            row[src], hits = float(h.mean()), hits + [h]
        row["pooled"] = float(np.concatenate(hits).mean())
        res[str(views)] = row
        logger.info("tta %d views on val: %s", views, {k: round(v, 4) for k, v in row.items()})
    return res


def detect_arrays(det: Detector, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A detector's findings on one frame as (N, 4) boxes and (N,) scores."""
    found = det(frame)
    return (np.array([f.box for f in found], np.float32).reshape(-1, 4),
            np.array([f.score for f in found], np.float32))


@contextmanager
def calibrated(det: Detector, calibration: dict):
    """``det`` as a device with this ``[model]`` calibration sees its camera, restored after."""
    as_found = det.box_scale, det.refine
    det.box_scale, det.refine = calibration.get("box_scale", 1.0), calibration.get("box_refine", False)
    try:
        yield det
    finally:
        det.box_scale, det.refine = as_found


def box_scaled(det: Detector, camera: str, scales: dict[str, float] | None):
    """``det`` with ``camera``'s per-device box scale (``[model] box_scale``; 1.0 if none given), restored after."""
    return calibrated(det, {"box_scale": (scales or {}).get(camera, 1.0)})


def detections_on_val(det: Detector, scales: dict[str, float] | None = None
                      ) -> dict[str, tuple[list, list[np.ndarray]]]:
    """Per frame camera: the detector's (boxes, scores) on each *val* frame, and the annotated boxes."""
    d = data.load("det")
    out = {}
    for src in ("bccd", "chula", "txl_pbc"):
        ix = np.nonzero((d["sources"] == src) & (d["splits"] == "val"))[0]
        with box_scaled(det, src, scales):
            out[src] = ([detect_arrays(det, d["frames"][i]) for i in ix],
                        [d["boxes"][i].reshape(-1, 4) for i in ix])
    return out


def eval_decode_val(det: Detector) -> dict:
    """A detector's AP50 on the *val* frames with and without box voting and the mirrored pass:
    how the decoding and the manifest's ``tta_flip`` were chosen. Leaves ``det`` as it found it."""
    as_found = det.vote, det.flip
    res = {}
    for vote in (False, True):
        for flip in (False, True):
            det.vote, det.flip = vote, flip
            row = {src: average_precision(dets, gts)["ap50"] for src, (dets, gts) in detections_on_val(det).items()}
            row["mean"] = float(np.mean(list(row.values())))
            res[f"vote={int(vote)} flip={int(flip)}"] = row
            logger.info("detector decode on val, vote %s flip %s: %s", vote, flip,
                        {k: round(v, 4) for k, v in row.items()})
    det.vote, det.flip = as_found
    return res


def detector_runners(manifest: Manifest) -> dict:
    from edge_app.backends.tflite import TFLiteBackend

    shapes = manifest.output_shapes("detector")
    return {
        "tflite_fp32": Detector.for_manifest(TFLiteBackend(manifest.file("detector", "tflite_fp32"), shapes), manifest,
                                             0.05),
        "tflite_int8": Detector.for_manifest(TFLiteBackend(manifest.file("detector", "tflite_int8"), shapes), manifest,
                                             0.05),
        "onnx_qdq": Detector.for_manifest(OnnxNet(manifest.file("detector", "onnx_qdq")), manifest, 0.05),
    }


class TorchClassifier:
    """A training checkpoint, run with the same preprocessing (for LOSO/levers)."""

    def __init__(self, ckpt: Path):
        import torch

        from scripts.training.wbcnet import Classifier as Net
        from scripts.training.wbcnet import Deployable

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net = Net(width=state["width"])
        net.load_state_dict(state["state_dict"])
        self.model, self.torch = Deployable(net).eval(), torch
        self.bg_norm = state.get("bg_norm", True)
        self.size = tuple(state.get("input_size", (96, 96)))  # checkpoints before 1.1 were all 96x96
        self.stain_norm = bool(state.get("stain_norm", False))
        # Sources whose train-split crops the run saw without labels (``--style-sources``).
        self.style_sources = list(state.get("style_sources", []))

    def probs(self, crops: list[np.ndarray], views: int = 1) -> np.ndarray:
        """Mean softmax over the first ``views`` dihedral views, as the runtime Classifier does."""
        norm = preprocess.normalise_background
        if not self.bg_norm:
            preprocess.normalise_background = lambda img, background=None: img.astype(np.float32)
        try:
            x = np.concatenate([preprocess.classifier_input(c, self.size, self.stain_norm) for c in crops])
        finally:
            preprocess.normalise_background = norm
        return self.run_views(x, views)

    def run_views(self, x: np.ndarray, views: int) -> np.ndarray:
        """Mean softmax over the first ``views`` dihedral views of a preprocessed (N, H, W, 3) batch."""
        from edge_app.model.bundle import VIEWS

        total, device = 0.0, next(self.model.parameters()).device  # a GPU when the caller moved the model there
        with self.torch.no_grad():
            for view in VIEWS[:views]:
                xv = np.ascontiguousarray(view(x))
                batches = (self.torch.from_numpy(xv[i:i + 256]).to(device) for i in range(0, len(xv), 256))
                total = total + np.concatenate([self.model(b)[0].cpu().numpy() for b in batches])
        return total / views


# ------------------------------------------------------------------ data
def classifier_test_sets() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    d = data.load("cls")
    out = {}
    for src in ("pbc", "raabin", "tecom", "chula", "bccd"):
        m = (d["sources"] == src) & (d["splits"] == "test") & (d["labels"] >= 0)
        out[src] = (list(d["images"][m]), d["labels"][m].astype(int))
    return out


def source_mask(d: dict, src: str, splits) -> np.ndarray:
    """The labelled crops of one source in these splits of the classifier cache ``d``."""
    return (d["sources"] == src) & np.isin(d["splits"], splits) & (d["labels"] >= 0)


def all_source_crops(src: str, splits=("train", "val", "test")) -> tuple[list[np.ndarray], np.ndarray]:
    d = data.load("cls")
    m = source_mask(d, src, splits)
    return list(d["images"][m]), d["labels"][m].astype(int)


def detector_test_sets() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    d = data.load("det")
    out = {}
    for src in ("bccd", "chula", "txl_pbc"):
        ix = np.nonzero((d["sources"] == src) & (d["splits"] == "test"))[0]
        out[src] = [(d["frames"][i], d["boxes"][i].reshape(-1, 4)) for i in ix]
    return out


def e2e_items(source: str, split: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Whole frames of a frame source (chula, bccd) with their subtype-labelled WBC boxes, one split."""
    by_image: dict[str, list[dict]] = {}
    with open(DATASETS / source / "boxes.csv") as f:
        for r in csv.DictReader(f):
            by_image.setdefault(r["image"], []).append(r)
    items = []
    for image, rows in sorted(by_image.items()):
        if split_of(source, image, rows[0].get("slide")) != split:
            continue
        wbc = [r for r in rows if r["cell"] == "WBC" and r["wbc_type"]]
        if source != "chula" and not wbc:
            continue  # BCCD frames whose WBC has no subtype say nothing about typing
        boxes = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in wbc], np.float32).reshape(-1, 4)
        labels = np.array([CLASSES.index(r["wbc_type"]) for r in wbc], int)
        items.append((preprocess.read_rgb(str(DATASETS / source / "images" / image)), boxes, labels))
    return items


# ------------------------------------------------------------------ evaluation
def run_classifier(clf, crops) -> np.ndarray:
    return np.stack([clf(c).probs for c in crops])


def classify_framed(det, crops) -> list[np.ndarray]:
    """The crops as ``wbc-counter classify`` frames them with detector ``det`` (``edge_app.imaging.framing``)."""
    return [framing.frame_cell(det, c) for c in crops]


def detector_for(runner: str) -> str:
    """The detector runner of the same precision as a classifier runner (its 1-view twin included)."""
    return runner.removesuffix("_1view")


def eval_classifiers(runners, sets, dets) -> dict:
    """Every runner on every test set, each crop framed by the detector of the runner's precision."""
    res, framed = {}, {}
    for name, clf in runners.items():
        dname = detector_for(name)
        for src, (crops, truth) in sets.items():
            if (dname, src) not in framed:
                framed[dname, src] = classify_framed(dets[dname], crops)
            t0 = time.time()
            res.setdefault(src, {})[name] = classification_metrics(truth, run_classifier(clf, framed[dname, src]))
            logger.info("classifier %s on %s test: five-class acc %.4f (%.0fs)", name, src,
                        res[src][name]["five_class_accuracy"] or -1, time.time() - t0)
    return res


def eval_noise(runners, dets, crops, truth, seed=0) -> dict:
    """Five-class accuracy under N = I + G*alpha, the noise added to the image as given. Each runner
    frames the noisy image as ``classify`` does; ``tflite_int8_as_given`` is ``classify --as-given``."""
    res = {}
    for name, runner, framed in (("tflite_fp32", "tflite_fp32", True), ("tflite_int8", "tflite_int8", True),
                                 ("tflite_int8_as_given", "tflite_int8", False)):
        clf, det = runners[runner], dets[runner] if framed else None
        res[name] = {}
        for a in ALPHAS:
            res[name][str(a)] = noisy_five_class(clf, det, crops, truth, a, seed)
            logger.info("noise alpha %.2f %s: %.4f", a, name, res[name][str(a)])
    return res


def noisy_five_class(clf, det, crops, truth, alpha: float, seed: int = 0) -> float:
    """Five-class accuracy under N = I + G*alpha added to each image as given, which detector ``det``
    then frames as ``classify`` does (``det`` None: classified as given, ``classify --as-given``)."""
    rng = np.random.default_rng(seed)
    noisy = [augment.add_gaussian_noise(c, alpha, rng) if alpha > 0 else c for c in crops]
    seen = classify_framed(det, noisy) if det is not None else noisy
    return classification_metrics(truth, run_classifier(clf, seen))["five_class_accuracy"]


def eval_detectors(runners, sets, threshold: float) -> dict:
    res = {}
    for name, det in runners.items():
        for src, items in sets.items():
            dets, gts, hit, tot, nfp = [], [], 0, 0, 0
            for frame, gt in items:
                boxes, scores = detect_arrays(det, frame)
                dets.append((boxes, scores))
                gts.append(gt)
                keep = scores >= threshold
                ious = iou_matrix(boxes[keep], gt)
                hit += int((ious.max(0) >= 0.5).sum()) if ious.size else 0
                tot += len(gt)
                nfp += int((ious.max(1) < 0.5).sum()) if ious.size else int(keep.sum())
            ap = average_precision(dets, gts)
            ap.update(ap75=average_precision(dets, gts, 0.75)["ap50"], recall50=hit / max(tot, 1),
                      false_positives=nfp, frames=len(items), threshold=threshold)
            res.setdefault(src, {})[name] = ap
            logger.info("detector %s on %s test: AP50 %.4f recall %.4f", name, src, ap["ap50"], ap["recall50"])
    return res


def end_to_end(det, clf, items, threshold: float) -> dict:
    """A cell is right when a detection matches its box (IoU >= 0.5) *and* the crop of that detection is
    typed as the cell's label."""
    right = total = found = 0
    for frame, gt, labels in items:
        dets = [d for d in det(frame) if d.score >= threshold]
        boxes = np.array([d.box for d in dets], np.float32).reshape(-1, 4)
        ious = iou_matrix(boxes, gt)
        for j in range(len(gt)):
            total += 1
            if not len(dets) or ious[:, j].max() < 0.5:
                continue
            found += 1
            k = int(ious[:, j].argmax())
            if clf(preprocess.cell_crop(frame, boxes[k])).probs.argmax() == labels[j]:
                right += 1
    return {"cells": total, "detected": found, "detected_and_typed": right,
            "accuracy": right / max(total, 1), "frames": len(items)}


def eval_end_to_end(det_runners, clf_runners, items, threshold: float) -> dict:
    res = {}
    for name in ("tflite_fp32", "tflite_int8"):
        res[name] = end_to_end(det_runners[name], clf_runners[name], items, threshold)
        logger.info("end-to-end chula %s: %d/%d", name, res[name]["detected_and_typed"], res[name]["cells"])
    return res


# Per-camera device calibrations validated with the shipped model
# (scripts/research/protocols/plan_chula_calibration.md):
# what a device with that camera sets in its [model] table. The shipped defaults stay 1.0 / off.
CAMERA_CALIBRATIONS = {"chula": {"box_scale": 0.89, "box_refine": True}}


def eval_camera_calibration(det_runners, clf_runners, threshold: float) -> dict:
    """Test frames of each calibrated camera, scored as a device with its calibration: detector AP per
    runtime and, for a camera with subtype labels, end to end (FP32 and INT8)."""
    sets = detector_test_sets()
    res = {}
    for cam, cal in CAMERA_CALIBRATIONS.items():
        row: dict = {"calibration": cal, "detector": {}, "end_to_end": {}}
        for name, det in det_runners.items():
            with calibrated(det, cal):
                row["detector"][name] = eval_detectors({name: det}, {cam: sets[cam]}, threshold)[cam][name]
        if cam in ("chula", "bccd"):
            items = e2e_items(cam, "test")
            for name in ("tflite_fp32", "tflite_int8"):
                with calibrated(det_runners[name], cal):
                    row["end_to_end"][name] = end_to_end(det_runners[name], clf_runners[name], items, threshold)
        logger.info("%s test with calibration %s: %s", cam, cal,
                    {k: round(v["ap50"], 4) for k, v in row["detector"].items()})
        res[cam] = row
    return res


def eval_end_to_end_val(det, clf, threshold: float, scales: dict[str, float] | None = None) -> dict:
    """INT8 end to end on the *val* frames of both labelled frame cameras (judges crop-augmentation changes)."""
    res = {}
    for src in ("chula", "bccd"):
        with box_scaled(det, src, scales):
            res[src] = end_to_end(det, clf, e2e_items(src, "val"), threshold)
    logger.info("end-to-end on val: %s", {k: (v["detected_and_typed"], v["cells"]) for k, v in res.items()})
    return res


def eval_kiosk_framing(manifest: Manifest, clf, split: str, scales: dict[str, float] | None = None) -> dict:
    """The crops of one split as given and as the kiosk frames them: this model's own INT8 detector finds
    the cell and the kiosk's square is cut around it (the image itself if none is found), which is what
    ``wbc-counter classify`` does. Chula and BCCD crops are cut at the annotated box already and are
    re-framed around the detector's box."""
    d = data.load("cls")
    det = kiosk_framing.shipped_detector(manifest.dir)
    res = {}
    for src in FRAMING_SOURCES:
        m = (d["sources"] == src) & (d["splits"] == split) & (d["labels"] >= 0)
        if not m.any():
            continue  # Tecom is never trained on, so it has no val split
        photos, truth = list(d["images"][m]), d["labels"][m].astype(int)
        with box_scaled(det, src, scales):  # a crop source's camera, where it is also a frame camera
            squares = [framing.kiosk_square(det, p) for p in photos]
        framed = [framing.kiosk_crop(p, q) for p, q in zip(photos, squares)]
        res[src] = {"photo": classification_metrics(truth, run_classifier(clf, photos)),
                    "kiosk": classification_metrics(truth, run_classifier(clf, framed)),
                    "framed": int(sum(q is not None for q in squares)), "n": len(photos)}
        logger.info("kiosk framing %s %s: five-class %.4f as given, %.4f framed (%d of %d framed)", src, split,
                    res[src]["photo"]["five_class_accuracy"], res[src]["kiosk"]["five_class_accuracy"],
                    res[src]["framed"], len(photos))
    return res


def eval_checkpoint(clf: TorchClassifier, src: str, splits, views: int) -> tuple[dict, dict]:
    """Metrics of a training checkpoint on one source: the crop as seen, and with ``views`` views."""
    crops, truth = all_source_crops(src, splits)
    return (classification_metrics(truth, clf.probs(crops, 1)),
            classification_metrics(truth, clf.probs(crops, views)))


def unseen_slides_row(clf: TorchClassifier, src: str, views: int) -> dict:
    """Extra LOSO fields on the left-out source's val and test slides only, and on Tecom, which no run sees.

    A run whose style bank held the left-out source's train-split crops (without labels) saw those
    pixels, so its val+test slides are the only part it never saw. A frame source's row gets the same
    slice without a bank too, so that a run with the style mix and its control compare on the same
    crops. A single-cell photo source left out without a bank gets nothing here (all of it is unseen)."""
    if src not in clf.style_sources and src in kiosk_framing.CROP_SOURCES:
        return {}
    m, t = eval_checkpoint(clf, src, ("val", "test"), views)
    out = {"style_sources": clf.style_sources, "n_unseen": m["n_five"], "acc_unseen": m["five_class_accuracy"],
           "acc_tta_unseen": t["five_class_accuracy"], "f1_tta_unseen": t["macro_f1_five"],
           "confusion_tta_unseen": t["confusion"]}
    if "tecom" not in clf.style_sources and src != "tecom":
        _, tt = eval_checkpoint(clf, "tecom", ("test",), views)
        out.update(tecom_tta=tt["five_class_accuracy"])
    return out


def eval_checkpoint_framed(clf: TorchClassifier, src: str, splits, views: int) -> dict | None:
    """A checkpoint on a single-cell photo source's crops framed as ``wbc-counter classify`` frames them:
    the kiosk square the shipped detector found (``scripts.training.kiosk_framing``'s cache), the photo whole where
    it found none. None for a frame source, whose crops are cut at the annotated box already."""
    if src not in kiosk_framing.CROP_SOURCES:
        return None
    d = data.load("cls")
    m = source_mask(d, src, splits)
    squares = kiosk_framing.load(d["keys"])[m]
    framed = [framing.kiosk_crop(p, q) for p, q in zip(d["images"][m], squares)]
    return classification_metrics(d["labels"][m].astype(int), clf.probs(framed, views))


def carry_studies(r: dict, earlier: dict) -> dict:
    """Copy the LOSO and lever rows of an earlier report into ``r``, with the command that produced them."""
    r["command_loso"] = earlier.get("command_loso", earlier.get("command"))
    for key in ("loso", "levers"):
        if earlier.get(key):
            r[key] = earlier[key]
    return r


def rescore_qdq(r: dict, manifest: Manifest, sources: list[str] | None = None) -> dict:
    """Re-score the Q/DQ ONNX rows of report ``r`` (classifier per crop test set, or only ``sources``;
    detector per frame test set; camera calibration) in place, leaving every other row as it was."""
    clf = {"onnx_qdq": classifier_runners(manifest)["onnx_qdq"]}
    det = {"onnx_qdq": detector_runners(manifest)["onnx_qdq"]}
    crop_sets = {k: v for k, v in classifier_test_sets().items() if not sources or k in sources}
    r["qdq_sources"] = list(crop_sets)
    for src, row in eval_classifiers(clf, crop_sets, det).items():
        r["classifier"][src].update(row)
    sets = detector_test_sets()
    for src, row in eval_detectors(det, sets, r["detect_threshold"]).items():
        r["detector"][src].update(row)
    for cam, cal in CAMERA_CALIBRATIONS.items():
        if cam in r.get("camera_calibration", {}):
            with calibrated(det["onnx_qdq"], cal):
                row = eval_detectors(det, {cam: sets[cam]}, r["detect_threshold"])[cam]["onnx_qdq"]
            r["camera_calibration"][cam]["detector"]["onnx_qdq"] = row
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=MODELS)
    ap.add_argument("--loso", nargs="*", default=[], help="CKPT:SOURCE pairs (classifier trained without SOURCE)")
    ap.add_argument("--levers", type=Path, nargs="*", default=[],
                    help="folders of lever-study runs (scripts/research/lever_sweep.sh)")
    ap.add_argument("--skip-main", action="store_true", help="only LOSO/levers (reuse evaluation.json)")
    ap.add_argument("--add-loso", nargs="*", default=[],
                    help="with --skip-main: CKPT:SOURCE pairs added to the LOSO rows already in evaluation.json")
    ap.add_argument("--keep-studies", action="store_true",
                    help="re-score the shipped model but keep the LOSO and lever rows of evaluation.json "
                         "(their checkpoints are training runs, not shipped, and do not depend on it)")
    ap.add_argument("--calibration-only", action="store_true",
                    help="re-score only the camera-calibration rows (CAMERA_CALIBRATIONS) into evaluation.json")
    ap.add_argument("--qdq-only", action="store_true",
                    help="re-score only the Q/DQ ONNX rows (classifier, detector, camera calibration) into "
                         "evaluation.json")
    ap.add_argument("--sources", nargs="+", default=None, metavar="SOURCE",
                    help="with --qdq-only: re-score the classifier rows of these crop test sets only")
    args = ap.parse_args(argv)
    if args.sources and not args.qdq_only:
        ap.error("--sources only narrows --qdq-only")
    if args.qdq_only and (args.calibration_only or args.skip_main or args.loso or args.levers or args.add_loso
                          or args.keep_studies):
        ap.error("--qdq-only re-scores the Q/DQ rows of an existing report: use it alone")
    if args.calibration_only and (args.skip_main or args.loso or args.levers or args.add_loso or args.keep_studies):
        ap.error("--calibration-only adds the calibration rows to an existing report: use it alone")
    if args.add_loso and not args.skip_main:
        ap.error("--add-loso adds to an existing report: use it with --skip-main")
    if args.keep_studies and (args.skip_main or args.loso or args.levers):
        ap.error("--keep-studies keeps the earlier LOSO/lever rows: it cannot be combined with "
                 "--skip-main, --loso or --levers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.model_dir
    manifest = Manifest.load(out)
    threshold = THRESHOLD
    jpath = out / "evaluation.json"
    earlier_r = json.loads(jpath.read_text()) if jpath.is_file() else {}
    if args.keep_studies and not earlier_r.get("loso"):
        ap.error(f"--keep-studies: {jpath} holds no LOSO rows to keep")
    if args.qdq_only:
        if earlier_r.get("version") != manifest.version:
            ap.error(f"--qdq-only: {jpath} is not a report of model {manifest.version}")
        r = rescore_qdq(earlier_r, manifest, args.sources)
        r["command_qdq"] = ("python -m scripts.training.evaluate " + " ".join(argv if argv is not None
                                                                            else sys.argv[1:])).strip()
        jpath.write_text(json.dumps(r, indent=1))
        write_report(r, out)
        logger.info("wrote %s", out / "EVALUATION.md")
        return 0
    if args.calibration_only:
        if earlier_r.get("version") != manifest.version:
            ap.error(f"--calibration-only: {jpath} is not a report of model {manifest.version}")
        r = earlier_r
        r["camera_calibration"] = eval_camera_calibration(detector_runners(manifest), classifier_runners(manifest),
                                                          r["detect_threshold"])
        args_text = " ".join(argv if argv is not None else sys.argv[1:])
        r["command_calibration"] = "python -m scripts.training.evaluate " + args_text
        jpath.write_text(json.dumps(r, indent=1))
        write_report(r, out)
        logger.info("wrote %s", out / "EVALUATION.md")
        return 0
    if args.skip_main and earlier_r:
        r = earlier_r
    else:
        r = {"version": manifest.version, "date": time.strftime("%Y-%m-%d"), "detect_threshold": threshold}
        clf = classifier_runners(manifest)
        det = detector_runners(manifest)
        sets = classifier_test_sets()
        r["classifier"] = eval_classifiers(clf, sets, det)
        r["classifier_framing"] = "classify"  # crops framed as `wbc-counter classify` frames them
        r["noise"] = eval_noise(clf, det, *sets["pbc"])
        r["detector"] = eval_detectors(det, detector_test_sets(), threshold)
        r["end_to_end"] = eval_end_to_end(det, clf, e2e_items("chula", "test"), threshold)
        r["end_to_end_val"] = eval_end_to_end_val(det["tflite_int8"], clf["tflite_int8"], threshold)
        r["camera_calibration"] = eval_camera_calibration(det, clf, threshold)
        r["kiosk_framing"] = eval_kiosk_framing(manifest, clf["tflite_int8"], "test")
        r["kiosk_framing_val"] = eval_kiosk_framing(manifest, clf["tflite_int8"], "val")
        r["tta_val"] = eval_tta_val(manifest)
        r["tta_views"] = manifest.tta_views
        r["decode_val"] = eval_decode_val(det["tflite_int8"])
        r["tta_flip"] = bool(manifest.entry("detector").get("tta_flip", False))
        r["box_vote"] = bool(manifest.entry("detector").get("box_vote", True))
        r["detector_stride"] = int(manifest.entry("detector")["stride"])
    cmd = ("python -m scripts.training.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    earlier = r.get("command_loso", r.get("command"))
    r["command_loso" if args.skip_main else "command"] = cmd
    if args.keep_studies:
        carry_studies(r, earlier_r)
    if args.add_loso:  # keep the rows of the earlier command, so its table stays one report
        # a re-run of the last command replaces its rows (below) and is not named twice
        r["command_loso"] = earlier if earlier.endswith(f"`{cmd}") else f"{earlier}`, then `{cmd}"
        added = {spec.rsplit(":", 1)[0] for spec in args.add_loso}
        r["loso"] = [row for row in r.get("loso", []) if row["ckpt"] not in added]
    elif args.loso:
        r["loso"] = []
    for spec in args.loso + args.add_loso:
        ckpt, src = spec.rsplit(":", 1)
        clf = TorchClassifier(Path(ckpt))
        m, t = eval_checkpoint(clf, src, ("train", "val", "test"), manifest.tta_views)
        row = {"source": src, "ckpt": ckpt, "n": m["n_five"], "acc": m["five_class_accuracy"],
               "f1": m["macro_f1_five"], "views": manifest.tta_views,
               "acc_tta": t["five_class_accuracy"], "f1_tta": t["macro_f1_five"], "confusion_tta": t["confusion"]}
        fr = eval_checkpoint_framed(clf, src, ("train", "val", "test"), manifest.tta_views)
        if fr is not None:
            row.update(acc_framed_tta=fr["five_class_accuracy"], f1_framed_tta=fr["macro_f1_five"],
                       confusion_framed_tta=fr["confusion"])
        row.update(unseen_slides_row(clf, src, manifest.tta_views))
        r["loso"].append(row)
    if args.levers:
        r["levers"] = []
        for ck in sorted(ck for d in args.levers for ck in d.glob("*/classifier.pt")):
            src = ck.parent.name.split("_")[1]
            splits = ("val", "test") if src == "chula" else ("train", "val", "test")  # ssl saw chula train slides
            clf = TorchClassifier(ck)
            m, mt = eval_checkpoint(clf, src, splits, manifest.tta_views)
            tec, tect = eval_checkpoint(clf, "tecom", ("test",), manifest.tta_views)
            size = clf.size[0]
            r["levers"].append({"run": f"{ck.parent.parent.name}/{ck.parent.name}", "crop": size, "source": src,
                                "splits": "+".join(splits), "n": m["n_five"], "acc": m["five_class_accuracy"],
                                "f1": m["macro_f1_five"], "tecom": tec["five_class_accuracy"],
                                "views": manifest.tta_views, "acc_tta": mt["five_class_accuracy"],
                                "tecom_tta": tect["five_class_accuracy"]})
    fs = earlier_r.get("fewshot")
    if fs and fs.get("classifier_int8_sha256") == sha256_file(manifest.file("classifier", "tflite_int8")):
        r["fewshot"] = fs  # figures of this very classifier file: kept until scripts.training.fewshot --write
    jpath.write_text(json.dumps(r, indent=1))
    plot_confusions(r["classifier"], out)
    plot_noise(r["noise"], out)
    write_report(r, out)
    logger.info("wrote %s", out / "EVALUATION.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
