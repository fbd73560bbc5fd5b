"""Few-shot curves of the site head (``edge_app.site.head``) with the shipped network, per labelled source.

    python -m scripts.training.fewshot                    # test splits: k = 0, 5, 10, 20, 10 draws, markdown
    python -m scripts.training.fewshot --write            # ... and into models/evaluation.json + EVALUATION.md
    python -m scripts.training.fewshot --select           # val splits: which head method, lambda and alpha
    python -m scripts.training.fewshot --bench            # ms per crop the head adds (fit excluded)

Protocol. Every crop is framed as ``wbc-counter classify`` frames it (the INT8
detector finds the cell, the kiosk's square is cut) and run through the INT8
TFLite classifier with the manifest's views, the kiosk's CPU path; the embedding
and the network's probabilities are cached under ``.cache/``. For each source,
k verified cells per class are drawn (seeded, ``--draws`` times) from one part
and the head is scored on the rest:

- pbc, raabin, tecom, bccd: drawn from the test split (at most half of a class's
  cells, so every class keeps cells to test on), scored on the rest of it;
- chula: drawn from the train and val slides, scored on the test slides (each
  slide holds one class, so "other cells of the same slides" does not exist).

k = 0 is the network alone on the whole test split (the figure of
``models/EVALUATION.md``'s classifier table); "network on rest" is the network
on the same cells the head is scored on, draw by draw. Which sources the network
trained on: pbc, raabin, chula and bccd train splits (``models/manifest.json``
``training_data``); tecom never. ``--select`` scores the same protocol on the
val splits (chula: train slides drawn, val slides scored) and is what chose the
defaults in ``edge_app.site.head``; no test figure chose anything.
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

ROOT = Path(__file__).resolve().parents[2]

from edge_app import cpuinfo  # noqa: E402
from edge_app.backends.tflite import TFLiteBackend  # noqa: E402
from edge_app.imaging import framing, preprocess  # noqa: E402
from edge_app.labels import CLASS_INDEX, CLASSES  # noqa: E402
from edge_app.model.bundle import Classifier, Detector, Manifest, sha256_file  # noqa: E402
from edge_app.site import head as site_head  # noqa: E402
from scripts.training import data  # noqa: E402
from scripts.training.eval_metrics import classification_metrics  # noqa: E402
from scripts.training.eval_report import fewshot_section  # noqa: E402
from scripts.training.splits import DATASETS, split_of  # noqa: E402

logger = logging.getLogger(__name__)
SOURCES = ("pbc", "raabin", "tecom", "chula", "bccd")
KS = (0, 5, 10, 20)
SELECT_SOURCES = ("pbc", "raabin", "chula", "bccd")
GRID = [("anchored", lam) for lam in (1e-3, 1e-2, 1e-1, 1.0)] + [("logreg", 1e-3), ("logreg", 1e-2),
                                                                    ("prototype", 0.0)]
ALPHAS = (0.5, 0.75, 1.0)
RUNNER_UP = ("anchored", 0.1, 0.5)  # the val runner-up (within 0.001 of the chosen head)


def crops(source: str, splits: tuple[str, ...]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Labelled crops of ``source`` in ``splits`` (the classifier cache's crops, read straight from the data)."""
    images, labels, keys = [], [], []
    if source in ("pbc", "raabin", "tecom"):
        with open(DATASETS / source / "labels.csv") as f:
            for r in csv.DictReader(f):
                if split_of(source, r["image"]) in splits:
                    images.append(data._resize_square(data._read(DATASETS / source / r["image"])))
                    labels.append(CLASS_INDEX[data.PBC_TO_CLASS.get(r["label"], r["label"])])
                    keys.append(r["image"])
        return images, np.array(labels, int), keys
    rows = data._chula_rows() if source == "chula" else data._bccd_rows()
    for image, rs in rows.items():
        wbc = [r for r in rs if r["cell"] == "WBC"]
        split = split_of(source, image, wbc[0]["slide"] if source == "chula" and wbc else None) if wbc else None
        if split not in splits:
            continue
        frame = None
        for n, r in enumerate(wbc):
            if not r["wbc_type"]:
                continue
            frame = data._read(DATASETS / source / "images" / image) if frame is None else frame
            box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
            images.append(data._resize_square(preprocess.cell_crop(frame, box)))
            labels.append(CLASS_INDEX[r["wbc_type"]])
            keys.append(data.crop_key(image, n))
    return images, np.array(labels, int), keys


def features(source: str, splits: tuple[str, ...], manifest: Manifest) -> dict:
    """Embeddings and network probabilities of a source's crops, framed as ``classify`` frames them (cached)."""
    sha = sha256_file(manifest.file("classifier", "tflite_int8"))[:12]
    path = ROOT / ".cache" / f"fewshot_{source}_{'-'.join(splits)}_{sha}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    images, labels, keys = crops(source, splits)
    det = Detector.for_manifest(TFLiteBackend(manifest.file("detector", "tflite_int8"),
                                              manifest.output_shapes("detector")), manifest)
    clf = Classifier.for_manifest(TFLiteBackend(manifest.file("classifier", "tflite_int8"),
                                                manifest.output_shapes("classifier"),
                                                output_names=manifest.output_names("classifier")), manifest)
    emb, probs = [], []
    for i, img in enumerate(images):
        res = clf(framing.frame_cell(det, img))
        emb.append(res.embedding)
        probs.append(res.probs)
        if i % 500 == 499:
            logger.info("%s %s: %d/%d crops", source, "+".join(splits), i + 1, len(images))
    out = {"embedding": np.stack(emb), "probs": np.stack(probs), "labels": labels, "keys": np.array(keys)}
    path.parent.mkdir(exist_ok=True)
    np.savez(path, **out)
    return out


def draw(labels: np.ndarray, k: int, rng: np.random.Generator, half: bool) -> np.ndarray:
    """Indices of k cells per class (at most half of a class's cells when the rest is the test set)."""
    picks = []
    for c in range(len(CLASSES)):
        ix = np.nonzero(labels == c)[0]
        n = min(k, len(ix) // 2 if half else len(ix))
        if n:
            picks.append(rng.choice(ix, n, replace=False))
    return np.concatenate(picks) if picks else np.zeros(0, int)


def protocol(source: str, val: bool, manifest: Manifest) -> tuple[dict, dict]:
    """(pool, test) feature sets of a source: the draw part and the scored part."""
    if source == "chula":
        return (features("chula", ("train",) if val else ("train", "val"), manifest),
                features("chula", ("val",) if val else ("test",), manifest))
    split = ("val",) if val else ("test",)
    f = features(source, split, manifest)
    return f, f


def score(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    m = classification_metrics(labels, probs)
    return m["five_class_accuracy"], m["macro_f1_five"]


def curves(sources, ks, draws, val: bool, manifest: Manifest, configs) -> dict:
    """{source: {config: {k: [(acc, f1, network_acc_on_rest, network_f1_on_rest), ...]}}}."""
    w0, b0 = site_head.shipped_head(manifest.file("classifier", "onnx"))
    out = {}
    for src in sources:
        pool, test = protocol(src, val, manifest)
        same = pool is test
        res = out[src] = {}
        base = score(test["labels"], test["probs"])
        for k in ks:
            for seed in range(draws if k else 1):
                if k == 0:
                    for cfg in configs:
                        res.setdefault(cfg, {}).setdefault(0, []).append((*base, *base))
                    continue
                rng = np.random.default_rng(seed)
                idx = draw(pool["labels"], k, rng, half=same)
                rest = np.setdiff1d(np.arange(len(test["labels"])), idx) if same else np.arange(len(test["labels"]))
                net = score(test["labels"][rest], test["probs"][rest])
                fitted = {}
                for method, lam, alpha in configs:
                    if (method, lam) not in fitted:
                        fitted[(method, lam)] = site_head.fit(pool["embedding"][idx], pool["labels"][idx], w0, b0,
                                                              method=method, lam=lam)
                    h = fitted[(method, lam)]
                    h.alpha = alpha
                    p = h.mix(test["embedding"][rest], test["probs"][rest])
                    res.setdefault((method, lam, alpha), {}).setdefault(k, []).append(
                        (*score(test["labels"][rest], p), *net))
        logger.info("%s: done", src)
    return out


def summarise(rows: list[tuple]) -> dict:
    a = np.array(rows, float)
    return {"acc_mean": float(a[:, 0].mean()), "acc_sd": float(a[:, 0].std()), "f1_mean": float(a[:, 1].mean()),
            "f1_sd": float(a[:, 1].std()), "network_rest_acc": float(a[:, 2].mean()),
            "network_rest_f1": float(a[:, 3].mean()), "draws": len(rows)}


def bench(manifest: Manifest, n: int = 2000) -> dict:
    """ms per crop the head adds on top of the network: mix() on one embedding at a time (thread CPU time)."""
    w0, b0 = site_head.shipped_head(manifest.file("classifier", "onnx"))
    rng = np.random.default_rng(0)
    x = rng.random((60, w0.shape[1]), np.float32)
    h = site_head.fit(x, np.repeat(np.arange(6), 10), w0, b0)
    e, p = x[0], np.full(6, 1 / 6, np.float32)
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        h.mix(e, p)
    return {"ms_per_crop_cpu": (time.thread_time() - c0) * 1000 / n,
            "ms_per_crop_wall": (time.perf_counter() - t0) * 1000 / n, "crops": n, "method": h.method,
            "cpu": cpuinfo.describe()}


def unseen_sources(manifest: Manifest) -> list[str]:
    """The labelled sources this classifier never trained on: tecom always, and the source that a
    leave-one-source-out export records as ``left_out_source`` (``scripts.training.export``)."""
    left = manifest.data["models"]["classifier"].get("left_out_source")
    return [s for s in SOURCES if s in ("tecom", left)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--select", action="store_true", help="val splits: score the head grid (method, lambda, alpha)")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--write", action="store_true",
                    help="also score the val grid, store both in MODEL_DIR/evaluation.json and re-render EVALUATION.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manifest = Manifest.load(args.model_dir)
    if args.bench:
        print(json.dumps(bench(manifest)))
        return 0
    if args.select:
        configs = [(m, lam, a) for m, lam in GRID for a in ALPHAS]
        res = curves(SELECT_SOURCES, (5, 10), args.draws, True, manifest, configs)
        table = []
        for cfg in configs:
            accs = {k: np.mean([summarise(res[s][cfg][k])["acc_mean"] for s in SELECT_SOURCES]) for k in (5, 10)}
            table.append((float(np.mean(list(accs.values()))), cfg, accs))
        table.sort(key=lambda t: -t[0])
        print("| method | lambda | alpha | val acc k=5 (mean of sources) | k=10 |")
        print("|---|---|---|---|---|")
        for _mean, (m, lam, a), accs in table:
            print(f"| {m} | {lam:g} | {a:g} | {accs[5]:.3f} | {accs[10]:.3f} |")
        best = table[0][1]
        print(json.dumps({"select": {"method": best[0], "lambda": best[1], "alpha": best[2]}}))
        return 0
    cfg = (site_head.DEFAULT_METHOD, site_head.DEFAULT_LAMBDA, site_head.DEFAULT_ALPHA)
    configs = [cfg, RUNNER_UP]
    res = curves(SOURCES, KS, args.draws, False, manifest, configs)
    cmd = "python -m scripts.training.fewshot"
    if args.model_dir.resolve() != (ROOT / "models").resolve():
        cmd += f" --model-dir {args.model_dir}"
    out = {"command": cmd + (" --write" if args.write else ""), "unseen": unseen_sources(manifest),
           "draws": args.draws, "precision": "int8", "views": manifest.tta_views,
           "classifier_int8_sha256": sha256_file(manifest.file("classifier", "tflite_int8")),
           "heads": [{"method": m, "lambda": lam, "alpha": a, "chosen": (m, lam, a) == cfg,
                      "curves": {s: {str(k): summarise(res[s][(m, lam, a)][k]) for k in KS} for s in SOURCES}}
                     for m, lam, a in configs],
           "cost": bench(manifest), "select": select_rows(args.draws, manifest) if args.write else None}
    print(fewshot_section(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.write:
        jpath = args.model_dir / "evaluation.json"
        r = json.loads(jpath.read_text())
        r["fewshot"] = out  # scripts.training.evaluate renders it from here when it writes the whole report
        jpath.write_text(json.dumps(r, indent=1))
        md = args.model_dir / "EVALUATION.md"
        md.write_text(splice_section(md.read_text(), fewshot_section(out)))
        logger.info("wrote the site adaptation section of %s", md)
    return 0


def splice_section(text: str, section: str) -> str:
    """``text`` with its site adaptation section (and its subsections) replaced by ``section``, or with
    ``section`` appended: the other sections of EVALUATION.md are left exactly as they are."""
    lines = text.rstrip("\n").split("\n")
    head = section.split("\n", 1)[0]
    if head in lines:
        i = lines.index(head)
        j = next((n for n in range(i + 1, len(lines)) if lines[n].startswith("## ")), len(lines))
        lines = lines[:i] + section.split("\n") + ([""] + lines[j:] if j < len(lines) else [])
    else:
        lines += [""] + section.split("\n")
    return "\n".join(lines) + "\n"


def select_rows(draws: int, manifest: Manifest) -> list[dict]:
    """The val grid (what chose the head): mean five-class accuracy over SELECT_SOURCES at k = 5 and 10."""
    configs = [(m, lam, a) for m, lam in GRID for a in ALPHAS]
    res = curves(SELECT_SOURCES, (5, 10), draws, True, manifest, configs)
    rows = []
    for m, lam, a in configs:
        accs = {k: float(np.mean([summarise(res[s][(m, lam, a)][k])["acc_mean"] for s in SELECT_SOURCES]))
                for k in (5, 10)}
        rows.append({"method": m, "lambda": lam, "alpha": a, "k5": accs[5], "k10": accs[10]})
    net = {k: float(np.mean([summarise(res[s][configs[0]][k])["network_rest_acc"] for s in SELECT_SOURCES]))
           for k in (5, 10)}
    rows.sort(key=lambda r: -(r["k5"] + r["k10"]))
    return [{"method": "network alone", "lambda": None, "alpha": 0.0, "k5": net[5], "k10": net[10]}] + rows


if __name__ == "__main__":
    sys.exit(main())
