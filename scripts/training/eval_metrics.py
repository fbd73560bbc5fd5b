"""Scoring functions of the evaluation (numpy only): classification metrics, AUC, IoU and detector AP.

Shared by ``scripts.training.evaluate`` (the report) and ``scripts.training.select_model`` (the
val figures a model is chosen by), so both score a model the same way.
"""

from __future__ import annotations

import numpy as np

from edge_app.detections import iou_matrix  # noqa: F401  (re-exported for the scripts)
from edge_app.labels import CLASSES

ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)  # Gaussian noise levels of the noise study
TRAINED_SOURCES = ("pbc", "raabin", "chula", "bccd")  # labelled sources the classifier trains on

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


def ap50_ap75(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray]) -> dict:
    """AP at IoU 0.5 and at 0.75 (how tight the boxes are), as ``{"ap50": .., "ap75": ..}``."""
    # average_precision names its figure "ap50" whatever IoU it is given
    return {"ap50": average_precision(dets, gts, 0.5)["ap50"], "ap75": average_precision(dets, gts, 0.75)["ap50"]}


def pooled_five(res: dict, which: str, sources=TRAINED_SOURCES) -> float:
    """Five-class accuracy over every crop of ``sources`` in an ``eval_kiosk_framing`` result, for one
    framing (``which``: "photo" as given, "kiosk" as ``classify`` frames the cell)."""
    rows = [res[s][which] for s in sources if s in res]
    n = sum(m["n_five"] for m in rows)
    return sum(m["five_class_accuracy"] * m["n_five"] for m in rows) / n if n else float("nan")
