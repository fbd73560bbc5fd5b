"""Evaluate the shipped models per source -> ``models/EVALUATION.md`` + PNG plots.

    python -m scripts.evaluate                       # shipped models/, all test splits
    python -m scripts.evaluate --loso runs/loso_chula/classifier.pt:chula --levers runs/levers runs/levers128
    python -m scripts.evaluate --keep-studies         # new model, same LOSO/lever rows (their runs are not shipped)

Every figure names its split (``scripts/splits.py``); nothing here is used to
choose a model. The classifier is run through the product's own path
(``edge_app.preprocess`` + ``edge_app.inference`` on TFLite FP32/INT8, and ONNX
Runtime for the FP32 and Q/DQ ONNX), so the numbers are the kiosk's numbers.

- classifier: each test crop as ``wbc-counter classify`` sees it (the
  detector of the same precision finds the cell and the kiosk's square is cut
  around it, ``edge_app.framing``): five-class accuracy (truth in the five
  classes; a prediction of "other" counts as wrong), macro-F1, per-class
  precision/recall/F1, one-vs-rest AUC, confusion matrix; INT8 vs FP32 vs Q/DQ
  side by side; Gaussian noise N = I + G*alpha, alpha 0.05..0.35, on PBC test
  crops (the noise is added to the image, then the cell is framed);
- detector: AP50 and recall@0.5 on held-out frames of each frame source;
- end to end on held-out Chula slides: a cell is right when a detection
  matches its box (IoU >= 0.5) *and* carries its label;
- framing: INT8 on every test and val crop as given (``classify --as-given``)
  beside the kiosk's framing of its cell (``classify``);
- leave-one-source-out and lever study from PyTorch checkpoints (``--loso``,
  ``--levers``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_app import framing, preprocess  # noqa: E402
from edge_app.config import ModelConfig  # noqa: E402
from edge_app.inference import Classifier, Detector, Manifest  # noqa: E402
from edge_app.labels import CLASSES  # noqa: E402
from scripts import augment, data, kiosk_framing  # noqa: E402
from scripts.splits import DATASETS, split_of  # noqa: E402

logger = logging.getLogger("evaluate")
MODELS = ROOT / "models"
# the runtime's default detection score, so the report scores what the kiosk counts
THRESHOLD = ModelConfig.model_fields["detect_threshold"].default
ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
TRAINED_SOURCES = ("pbc", "raabin", "chula", "bccd")  # labelled sources the classifier trains on
FRAMING_SOURCES = ("pbc", "raabin", "tecom", "chula", "bccd")


# ------------------------------------------------------------------ runners
class OnnxNet:
    """ONNX Runtime with the Backend calling convention (reference + Q/DQ check)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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


def eval_decode_val(det: Detector) -> dict:
    """A detector's AP50 on the *val* frames with and without box voting and the mirrored pass:
    how the decoding and the manifest's ``tta_flip`` were chosen. Leaves ``det`` as it found it."""
    d = data.load("det")
    as_found = det.vote, det.flip
    res = {}
    for vote in (False, True):
        for flip in (False, True):
            det.vote, det.flip, row = vote, flip, {}
            for src in ("bccd", "chula", "txl_pbc"):
                ix = np.nonzero((d["sources"] == src) & (d["splits"] == "val"))[0]
                dets = [detect_arrays(det, d["frames"][i]) for i in ix]
                row[src] = average_precision(dets, [d["boxes"][i].reshape(-1, 4) for i in ix])["ap50"]
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

        from scripts.wbcnet import Classifier as Net
        from scripts.wbcnet import Deployable

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net = Net(width=state["width"])
        net.load_state_dict(state["state_dict"])
        self.model, self.torch = Deployable(net).eval(), torch
        self.bg_norm = state.get("bg_norm", True)
        self.size = tuple(state.get("input_size", (96, 96)))  # checkpoints before 1.1 were all 96x96
        self.stain_norm = bool(state.get("stain_norm", False))

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
        from edge_app.inference import VIEWS

        total, device = 0.0, next(self.model.parameters()).device  # a GPU when the caller moved the model there
        with self.torch.no_grad():
            for view in VIEWS[:views]:
                xv = np.ascontiguousarray(view(x))
                batches = (self.torch.from_numpy(xv[i:i + 256]).to(device) for i in range(0, len(xv), 256))
                total = total + np.concatenate([self.model(b)[0].cpu().numpy() for b in batches])
        return total / views


# ------------------------------------------------------------------ metrics
def classification_metrics(truth: np.ndarray, probs: np.ndarray) -> dict:
    pred = probs.argmax(1)
    five = truth < 5
    out = {"n": int(len(truth)), "n_five": int(five.sum()),
           "five_class_accuracy": float((pred[five] == truth[five]).mean()) if five.any() else None,
           "accuracy_all": float((pred == truth).mean())}
    per, f1s = {}, []
    present = [c for c in range(len(CLASSES)) if (truth == c).any()]
    for c in range(len(CLASSES)):
        tp = int(((pred == c) & (truth == c)).sum())
        fp = int(((pred == c) & (truth != c)).sum())
        fn = int(((pred != c) & (truth == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        auc = ovr_auc(truth == c, probs[:, c]) if c in present and (truth != c).any() else None
        per[CLASSES[c]] = {"precision": p, "recall": r, "f1": f1, "support": int((truth == c).sum()), "auc": auc}
        if c in present:
            f1s.append(f1)
    out["per_class"] = per
    out["macro_f1"] = float(np.mean(f1s)) if f1s else None
    five_present = [c for c in present if c < 5]
    out["macro_f1_five"] = float(np.mean([per[CLASSES[c]]["f1"] for c in five_present])) if five_present else None
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    for t, p in zip(truth, pred):
        cm[t, p] += 1
    out["confusion"] = cm.tolist()
    return out


def ovr_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half)."""
    order = np.argsort(score)
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    npos, nneg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    xx1 = np.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = np.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-6)


def average_precision(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray], thr: float = 0.5) -> dict:
    """VOC-style all-point AP at IoU thr; recall at the runtime's score threshold is reported separately."""
    records, npos = [], sum(len(g) for g in gts)
    for (boxes, scores), gt in zip(dets, gts):
        used = np.zeros(len(gt), bool)
        ious = iou_matrix(boxes, gt)
        for k in np.argsort(-scores):
            j = int(ious[k].argmax()) if len(gt) else -1
            hit = j >= 0 and ious[k, j] >= thr and not used[j]
            if hit:
                used[j] = True
            records.append((scores[k], hit))
    records.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records])
    fp = np.cumsum([not r[1] for r in records])
    rec = tp / max(npos, 1)
    prec = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return {"ap50": float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum()), "gt": int(npos)}


# ------------------------------------------------------------------ data
def classifier_test_sets() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    d = data.load("cls")
    out = {}
    for src in ("pbc", "raabin", "tecom", "chula", "bccd"):
        m = (d["sources"] == src) & (d["splits"] == "test") & (d["labels"] >= 0)
        out[src] = (list(d["images"][m]), d["labels"][m].astype(int))
    return out


def all_source_crops(src: str, splits=("train", "val", "test")) -> tuple[list[np.ndarray], np.ndarray]:
    d = data.load("cls")
    m = (d["sources"] == src) & np.isin(d["splits"], splits) & (d["labels"] >= 0)
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
    """The crops as ``wbc-counter classify`` frames them with detector ``det`` (``edge_app.framing``)."""
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
            ap.update(recall50=hit / max(tot, 1), false_positives=nfp, frames=len(items), threshold=threshold)
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


def eval_end_to_end_val(det, clf, threshold: float) -> dict:
    """INT8 end to end on the *val* frames of both labelled frame cameras (judges crop-augmentation changes)."""
    res = {src: end_to_end(det, clf, e2e_items(src, "val"), threshold) for src in ("chula", "bccd")}
    logger.info("end-to-end on val: %s", {k: (v["detected_and_typed"], v["cells"]) for k, v in res.items()})
    return res


def eval_kiosk_framing(manifest: Manifest, clf, split: str) -> dict:
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
        squares = [framing.kiosk_square(det, p) for p in photos]
        framed = [framing.kiosk_crop(p, q) for p, q in zip(photos, squares)]
        res[src] = {"photo": classification_metrics(truth, run_classifier(clf, photos)),
                    "kiosk": classification_metrics(truth, run_classifier(clf, framed)),
                    "framed": int(sum(q is not None for q in squares)), "n": len(photos)}
        logger.info("kiosk framing %s %s: five-class %.4f as given, %.4f framed (%d of %d framed)", src, split,
                    res[src]["photo"]["five_class_accuracy"], res[src]["kiosk"]["five_class_accuracy"],
                    res[src]["framed"], len(photos))
    return res


def pooled_five(res: dict, which: str, sources=TRAINED_SOURCES) -> float:
    """Five-class accuracy over every crop of ``sources`` in an ``eval_kiosk_framing`` result, for one
    framing (``which``: "photo" as given, "kiosk" as ``classify`` frames the cell)."""
    rows = [res[s][which] for s in sources if s in res]
    n = sum(m["n_five"] for m in rows)
    return sum(m["five_class_accuracy"] * m["n_five"] for m in rows) / n if n else float("nan")


def eval_checkpoint(clf: TorchClassifier, src: str, splits, views: int) -> tuple[dict, dict]:
    """Metrics of a training checkpoint on one source: the crop as seen, and with ``views`` views."""
    crops, truth = all_source_crops(src, splits)
    return (classification_metrics(truth, clf.probs(crops, 1)),
            classification_metrics(truth, clf.probs(crops, views)))


# ------------------------------------------------------------------ report
def plot_confusions(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for src, by in results.items():
        m = by["tflite_int8"]
        cm = np.array(m["confusion"])
        rows = [i for i in range(len(CLASSES)) if cm[i].sum() or cm[:, i].sum()]
        cm = cm[np.ix_(rows, rows)]
        fig, ax = plt.subplots(figsize=(4.6, 4))
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        names = [CLASSES[i][:5] for i in rows]
        ax.set_xticks(range(len(rows)), names, rotation=45)
        ax.set_yticks(range(len(rows)), names)
        for i in range(len(rows)):
            for j in range(len(rows)):
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"{src} test, INT8 TFLite (acc {m['five_class_accuracy']:.3f})", fontsize=9)
        fig.tight_layout()
        name = f"confusion_{src}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def plot_noise(noise: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for name, by in noise.items():
        ax.plot([float(a) for a in by], list(by.values()), marker="o", label=name)
    ax.axhline(0.85, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("alpha (N = I + G*alpha)")
    ax.set_ylabel("five-class accuracy")
    ax.set_title("PBC test crops under Gaussian noise", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "noise_pbc.png", dpi=90)
    plt.close(fig)
    return "noise_pbc.png"


def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_report(r: dict, out: Path) -> None:
    L = ["# Evaluation of the shipped model", "",
         f"Generated by `{r['command']}` on {r['date']} (model version {r['version']}).",
         "Splits: `scripts/splits.py` (Chula by slide; BCCD by frame with txl_pbc duplicates moved to the BCCD split;",
         "PBC/Raabin by seeded hash buckets, no slide ids exist; Tecom is test-only and never trained on).",
         "Five-class accuracy counts a prediction of `other` as wrong.",
         "No test-split figure below was used to choose anything.", "",
         "## Classifier, per source (test splits)", ""]
    if r.get("classifier_framing") == "classify":
        L += ["Each crop is framed as `wbc-counter classify` frames it: the detector of the same precision finds",
              "the cell nearest the centre and the classifier sees the kiosk's square of 1.4 times the box's",
              "longest side (`edge_app/framing.py`); a crop in which no cell is found is classified whole.",
              "The crops as given (`classify --as-given`) are in \"Framing\" below.", ""]
    L += [
         "| source (test split) | n | runtime | five-class acc | macro-F1 (five) | macro-F1 (all present) |",
         "|---|---|---|---|---|---|"]
    for src, by in r["classifier"].items():
        for name, m in by.items():
            L.append(f"| {src} | {m['n_five']} | {name} | {fmt(m['five_class_accuracy'])} | {fmt(m['macro_f1_five'])}"
                     f" | {fmt(m['macro_f1'])} |")
    views = r.get("tta_views", 1)
    if views > 1:
        L += ["", f"Every runtime averages {views} rotations/mirrors of each crop (the manifest's `tta_views`, "
              "chosen on the val splits below); `tflite_int8_1view` is the same INT8 model on the crop as seen."]
    L += ["", "Per class (INT8 TFLite): precision / recall / F1 / one-vs-rest AUC", ""]
    for src, by in r["classifier"].items():
        m = by["tflite_int8"]
        L += [f"**{src}**", "", "| class | support | precision | recall | F1 | AUC |", "|---|---|---|---|---|---|"]
        for c, pc in m["per_class"].items():
            if pc["support"]:
                L.append(f"| {c} | {pc['support']} | {fmt(pc['precision'])} | {fmt(pc['recall'])} | {fmt(pc['f1'])}"
                         f" | {fmt(pc['auc'])} |")
        L += ["", f"![confusion {src}](confusion_{src}.png)", ""]
    if r.get("tta_val"):
        srcs = list(next(iter(r["tta_val"].values())))
        L += ["## Test-time views (val splits: how `tta_views` was chosen)", "",
              "Five-class accuracy of the INT8 classifier on the *val* crops of each trained source when the",
              "probabilities are averaged over 1, 2, 4 or 8 rotations/mirrors of the crop.", "",
              "| views | " + " | ".join(srcs) + " |", "|---|" + "---|" * len(srcs)]
        for v, row in r["tta_val"].items():
            L.append(f"| {v} | " + " | ".join(fmt(row[k]) for k in srcs) + " |")
        L.append("")
    L += ["## Gaussian noise (PBC test crops)", "",
          "The noise is added to the image as given; `tflite_fp32` and `tflite_int8` then frame the cell as",
          "`classify` does (the detector sees the noisy image too), `tflite_int8_as_given` classifies it whole.", "",
          "| alpha | " + " | ".join(r["noise"]) + " |",
          "|---|" + "---|" * len(r["noise"])]
    for a in ALPHAS:
        L.append(f"| {a} | " + " | ".join(fmt(r['noise'][n][str(a)]) for n in r["noise"]) + " |")
    L += ["", "![noise](noise_pbc.png)", "", "## Detector (held-out frames)", "",
          "| source (test split) | frames | cells | runtime | AP50 | recall@0.5 (score >= %.2f) | false positives |"
          % r["detect_threshold"], "|---|---|---|---|---|---|---|"]
    for src, by in r["detector"].items():
        for name, m in by.items():
            L.append(f"| {src} | {m['frames']} | {m['gt']} | {name} | {fmt(m['ap50'])} | {fmt(m['recall50'])}"
                     f" | {m['false_positives']} |")
    if "box_vote" in r or "tta_flip" in r:
        vote, flip = r.get("box_vote", True), r.get("tta_flip", False)
        how = ("as the heat-weighted vote of its 3x3 neighbours" if vote else "as the peak cell's own box") + \
            " (the manifest's `box_vote`)"
        mirror = ("averages the frame with its mirror image" if flip else "runs the frame once, not mirrored") + \
            " (the manifest's `tta_flip`)"
        L += ["", f"Every detector runtime decodes each peak's box {how} and {mirror}, both chosen on the val"
              f" frames below (stride {r.get('detector_stride', 16)} px)."]
    if r.get("decode_val"):
        srcs = list(next(iter(r["decode_val"].values())))
        L += ["", "### Detector decoding (val frames: how voting and `tta_flip` were chosen)", "",
              "AP50 of the INT8 detector on the *val* frames of each camera.", "",
              "| decoding | " + " | ".join(srcs) + " |", "|---|" + "---|" * len(srcs)]
        for k, row in r["decode_val"].items():
            L.append(f"| {k} | " + " | ".join(fmt(row[s]) for s in srcs) + " |")
    L += ["", "## End to end on held-out Chula slides (detected and typed)", "",
          "| runtime | frames | cells | detected | detected and typed | accuracy |", "|---|---|---|---|---|---|"]
    for name, m in r["end_to_end"].items():
        L.append(f"| {name} | {m['frames']} | {m['cells']} | {m['detected']} | {m['detected_and_typed']}"
                 f" | {fmt(m['accuracy'])} |")
    if r.get("end_to_end_val"):
        L += ["", "### End to end on val frames (INT8; what the crop-jitter trial in MODEL_CARD.md was judged by)", "",
              "| camera (val split) | frames | cells | detected | detected and typed | accuracy |",
              "|---|---|---|---|---|---|"]
        for src, m in r["end_to_end_val"].items():
            L.append(f"| {src} | {m['frames']} | {m['cells']} | {m['detected']} | {m['detected_and_typed']}"
                     f" | {fmt(m['accuracy'])} |")
    for key, split in (("kiosk_framing", "test"), ("kiosk_framing_val", "val")):
        if not r.get(key):
            continue
        L += ["", f"## Framing ({split} splits, INT8, {r.get('tta_views', 1)} views)", "",
              "Each crop as given (`wbc-counter classify --as-given`), and cut as the kiosk cuts a detected cell",
              "(`wbc-counter classify`): the shipped INT8 detector finds the cell and the classifier sees a square",
              "of 1.4 times the box's longest side (`edge_app/framing.py`). A PBC cell fills about 40% of its",
              "photo and 70% of the kiosk's crop; Chula and BCCD crops are cut at 1.4 times the annotated box and",
              "are re-framed around the detector's box. Pooled: every crop of the trained sources.",
              "", "| source | crops | framed | five-class, as given | macro-F1 (five) | five-class, kiosk framing"
              " | macro-F1 (five) |", "|---|---|---|---|---|---|---|"]
        for src, m in r[key].items():
            L.append(f"| {src} | {m['n']} | {m['framed']} | {fmt(m['photo']['five_class_accuracy'])}"
                     f" | {fmt(m['photo']['macro_f1_five'])} | {fmt(m['kiosk']['five_class_accuracy'])}"
                     f" | {fmt(m['kiosk']['macro_f1_five'])} |")
        L.append(f"| pooled ({', '.join(s for s in TRAINED_SOURCES if s in r[key])}) | | | "
                 f"{fmt(pooled_five(r[key], 'photo'))} | | {fmt(pooled_five(r[key], 'kiosk'))} | |")
    if r.get("loso"):
        L += ["", "## Leave one source out", "", f"Generated by `{r.get('command_loso', r['command'])}`.", "",
              "| left-out source | checkpoint | crops (all splits of that source) | five-class acc | macro-F1 (five)"
              " | views (runtime) | five-class acc | macro-F1 (five) |",
              "|---|---|---|---|---|---|---|---|"]
        for row in r["loso"]:
            L.append(f"| {row['source']} | `{row['ckpt']}` | {row['n']} | {fmt(row['acc'])} | {fmt(row['f1'])}"
                     f" | {row.get('views', 1)} | {fmt(row.get('acc_tta'))} | {fmt(row.get('f1_tta'))} |")
    if r.get("levers"):
        L += ["", "## What each lever gave (left-out source, short schedule)", "",
              "Runs of `scripts/lever_sweep.sh DIR`: 6 epochs x 6,400 crops each (a sixth of the shipped",
              "schedule, to fit a 2-core CPU), one lever changed at a time against `recipe` (the shipped recipe",
              "at that crop size). `noaug`: no photometric augmentation; `nobg`: no background white balance;",
              "`ssl`: + FixMatch-style pseudo-labels on unlabelled train-split crops of chula/bccd/txl_pbc;",
              "`stain`: + stain-density referencing of each crop. Chula is scored on its val+test slides only",
              "(the ssl run saw its train slides unlabelled); 62 crops from 4 slides-classes, so one slide's",
              "look dominates: read these as noisy. The last two columns average the runtime's test-time views.",
              "", "| run | crop | left out | test crops | five-class acc | macro-F1 (five) | tecom acc"
              " | views | five-class acc | tecom acc |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["levers"]:
            L.append(f"| {row['run']} | {row.get('crop', 96)} | {row['source']} ({row['splits']}) | {row['n']}"
                     f" | {fmt(row['acc'])} | {fmt(row['f1'])} | {fmt(row['tecom'])} | {row.get('views', 1)}"
                     f" | {fmt(row.get('acc_tta'))} | {fmt(row.get('tecom_tta'))} |")
    (out / "EVALUATION.md").write_text("\n".join(L) + "\n")


def carry_studies(r: dict, earlier: dict) -> dict:
    """Copy the LOSO and lever rows of an earlier report into ``r``, with the command that produced them."""
    r["command_loso"] = earlier.get("command_loso", earlier.get("command"))
    for key in ("loso", "levers"):
        if earlier.get(key):
            r[key] = earlier[key]
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=MODELS)
    ap.add_argument("--loso", nargs="*", default=[], help="CKPT:SOURCE pairs (classifier trained without SOURCE)")
    ap.add_argument("--levers", type=Path, nargs="*", default=[],
                    help="folders of lever-study runs (scripts/lever_sweep.sh)")
    ap.add_argument("--skip-main", action="store_true", help="only LOSO/levers (reuse evaluation.json)")
    ap.add_argument("--add-loso", nargs="*", default=[],
                    help="with --skip-main: CKPT:SOURCE pairs added to the LOSO rows already in evaluation.json")
    ap.add_argument("--keep-studies", action="store_true",
                    help="re-score the shipped model but keep the LOSO and lever rows of evaluation.json "
                         "(their checkpoints are training runs, not shipped, and do not depend on it)")
    args = ap.parse_args(argv)
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
        r["kiosk_framing"] = eval_kiosk_framing(manifest, clf["tflite_int8"], "test")
        r["kiosk_framing_val"] = eval_kiosk_framing(manifest, clf["tflite_int8"], "val")
        r["tta_val"] = eval_tta_val(manifest)
        r["tta_views"] = manifest.tta_views
        r["decode_val"] = eval_decode_val(det["tflite_int8"])
        r["tta_flip"] = bool(manifest.entry("detector").get("tta_flip", False))
        r["box_vote"] = bool(manifest.entry("detector").get("box_vote", True))
        r["detector_stride"] = int(manifest.entry("detector")["stride"])
    cmd = ("python -m scripts.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
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
        m, t = eval_checkpoint(TorchClassifier(Path(ckpt)), src, ("train", "val", "test"), manifest.tta_views)
        r["loso"].append({"source": src, "ckpt": ckpt, "n": m["n_five"], "acc": m["five_class_accuracy"],
                          "f1": m["macro_f1_five"], "views": manifest.tta_views,
                          "acc_tta": t["five_class_accuracy"], "f1_tta": t["macro_f1_five"],
                          "confusion_tta": t["confusion"]})
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
    jpath.write_text(json.dumps(r, indent=1))
    plot_confusions(r["classifier"], out)
    plot_noise(r["noise"], out)
    write_report(r, out)
    logger.info("wrote %s", out / "EVALUATION.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
