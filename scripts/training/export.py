"""Export trained checkpoints to the shipped artifacts under ``models/``.

    python -m scripts.training.export --classifier runs/cls/classifier.pt --detector runs/det/detector.pt
    python -m scripts.training.export --classifier runs/cls/classifier.pt --keep-detector   # classifier-only update
    python -m scripts.training.export --keep-classifier --detector runs/det/detector.pt     # detector-only update
    python -m scripts.training.export --classifier models/classifier.onnx runs/cls_b/classifier.pt --keep-detector \
        --out runs/cand        # two classifiers as one averaging graph, written beside models/, not over it

For each network (``detector``, ``classifier``):

- ``<net>.onnx``: opset 13, static shapes, NHWC float32 input 0..255 (what
  TensorRT 8.2+ parses; the Jetson builds its INT8 engine from it);
- ``<net>_qdq.onnx``: the same graph with Q/DQ nodes (symmetric int8,
  per-channel weights) calibrated on ``calibration/`` with ONNX Runtime, for
  TensorRT 10+/11 where implicit INT8 calibration is deprecated/removed;
- ``<net>_fp32.tflite`` and ``<net>_int8.tflite``: litert-torch conversion,
  then full-integer static quantisation (ai-edge-quantizer ``static_wi8_ai8``)
  calibrated on exactly the same ``calibration/`` images;
- ``manifest.json``: sha256, shapes, normalisation, class order, version,
  training data; ``parity/``: real images + the PyTorch outputs on them, for
  ``tests/test_model_parity.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # the quantiser's progress bars flood logs
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from edge_app.labels import CLASSES  # noqa: E402
from edge_app.model.bundle import sha256_file as sha256  # noqa: E402  (the runtime's own manifest check)
from scripts.training import embedding_outputs, onnx_weights, qdq  # noqa: E402
from scripts.training.quantize import CALIB, calibration_inputs, quantize_tflite  # noqa: E402
from scripts.training.wbcnet import Classifier, Deployable, Detector, Ensemble  # noqa: E402

logger = logging.getLogger("export")
MODELS = ROOT / "models"
OPSET = 13
NAMES = {"detector": (["frame"], ["heatmap", "ltrb"]), "classifier": (["crop"], ["probs", "attention"])}


def load_net(kind: str, ckpt: str) -> Deployable:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if kind == "classifier" and tuple(state.get("input_size", (96, 96))) != preprocess.CLASSIFIER_SIZE:
        raise SystemExit(f"{ckpt} was trained on {state.get('input_size', (96, 96))} crops but "
                         f"edge_app.imaging.preprocess.CLASSIFIER_SIZE is {preprocess.CLASSIFIER_SIZE}")
    if kind == "classifier":
        net = Classifier(width=state["width"])
    else:  # checkpoints before the stride option were all stride 16
        net = Detector(width=state["width"], stride=int(state.get("stride", 16)))
    net.load_state_dict(state["state_dict"])
    return Deployable(net).eval()


def classifier_member(path: str) -> tuple[Deployable, dict]:
    """One classifier: a training checkpoint (``.pt``), or a shipped ``classifier.onnx`` read back
    (``scripts.training.onnx_weights``) from a model folder whose ``manifest.json`` names it by its sha256."""
    p = Path(path)
    if p.suffix != ".onnx":
        state = torch.load(p, map_location="cpu", weights_only=False)
        return load_net("classifier", path), {"from": str(p), "width": state["width"], "epoch": state["epoch"],
                                               "val": state["val"], "stain_norm": bool(state.get("stain_norm")),
                                               "exclude_source": state.get("exclude_source")}
    mpath = p.parent / "manifest.json"
    if not mpath.is_file():
        sys.exit(f"--classifier {path}: an ONNX member needs the manifest.json of its model folder beside it")
    manifest = json.loads(mpath.read_text())
    entry = manifest["models"]["classifier"]
    if entry["files"]["onnx"] != p.name or entry["sha256"].get(p.name) != sha256(p):
        sys.exit(f"--classifier {path}: not the classifier ONNX that {mpath} names (name or sha256 differ)")
    if "ensemble" in entry:
        sys.exit(f"--classifier {path}: already an ensemble; name its members instead")
    info = {"from": f"{p.name} of {manifest['name']} {manifest['version']}", "sha256": sha256(p),
            "width": entry["width_multiplier"], "epoch": entry["checkpoint_epoch"], "val": entry["val"],
            "stain_norm": bool(entry.get("preprocess", {}).get("stain_norm", False))}
    return onnx_weights.classifier_from_onnx(p, info["width"]), info


def load_classifier(paths: list[str]) -> tuple[torch.nn.Module, dict]:
    """The classifier to export and its manifest facts: one member as itself, several as an ``Ensemble``."""
    members = [classifier_member(p) for p in paths]
    infos = [info for _, info in members]
    if len({i["stain_norm"] for i in infos}) > 1 or len({i["width"] for i in infos}) > 1:
        sys.exit("--classifier: ensemble members must share their width and preprocessing (stain_norm)")
    if len(members) == 1:
        return members[0][0], infos[0]
    facts = {"width": infos[0]["width"], "stain_norm": infos[0]["stain_norm"],
             "ensemble": [{k: v for k, v in i.items() if k not in ("width", "stain_norm")} for i in infos]}
    return Ensemble([m for m, _ in members]).eval(), facts


def training_data(left_out: str | None) -> str:
    """The manifest's training-data line; a leave-one-source-out classifier names the source it never saw."""
    line = ("../shared/datasets train splits (scripts/training/splits.py): pbc (CC BY 4.0), raabin, chula (MIT),"
            " bccd (MIT), txl_pbc (MIT; detector only)")
    return line + (f"; the classifier left {left_out} out of training" if left_out else "")


def classifier_left_out(fact: dict | None, given: str | None) -> str | None:
    """The source an exported classifier never trained on: its checkpoints' record, else ``--left-out``."""
    if fact is None:
        return given  # a kept classifier: only what the caller says
    recorded = {m.get("exclude_source") for m in fact.get("ensemble", [fact])}
    if len(recorded) > 1:
        sys.exit(f"--classifier: the members were trained without different sources {sorted(map(str, recorded))}")
    (rec,) = recorded
    if rec and given and rec != given:
        sys.exit(f"--left-out {given}: the checkpoint records that it was trained without {rec}")
    return rec or given


def input_shape(kind: str) -> tuple[int, ...]:
    w, h = preprocess.CLASSIFIER_SIZE if kind == "classifier" else preprocess.DETECTOR_SIZE
    return (1, h, w, 3)


def export_onnx(model: Deployable, kind: str, path: Path) -> None:
    inputs, outputs = NAMES[kind]
    x = torch.zeros(input_shape(kind))
    torch.onnx.export(model, (x,), str(path), opset_version=OPSET, input_names=inputs, output_names=outputs,
                      dynamo=False, do_constant_folding=True)
    import onnx

    m = onnx.load(str(path))
    # The exporter leaves symbolic output dims after Pad/Slice; TensorRT and
    # the app want every shape static: write the known shapes, re-infer.
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in model(x)]
    for out, shape in zip(m.graph.output, shapes):
        dims = out.type.tensor_type.shape.dim
        for d, v in zip(dims, shape):
            d.Clear()
            d.dim_value = int(v)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    logger.info("%s: ONNX opset %d, ops %s", path.name, OPSET, sorted({n.op_type for n in m.graph.node}))


def export_tflite(model: Deployable, kind: str, fp32: Path, int8: Path, calib: list[np.ndarray]) -> None:
    import litert_torch

    x = torch.zeros(input_shape(kind))
    edge = litert_torch.convert(model, (x,))
    edge.export(str(fp32))
    quantize_tflite(fp32, int8, calib)


def output_shapes(model: Deployable, kind: str) -> list[list[int]]:
    with torch.no_grad():
        outs = model(torch.zeros(input_shape(kind)))
    return [list(o.shape) for o in outs]


def write_parity(models: dict[str, Deployable], stain_norm: bool, out: Path) -> dict:
    """A few real calibration images + PyTorch outputs, for the parity test.

    Networks not in ``models`` (kept with ``--keep-detector`` / ``--keep-classifier``) keep
    their parity images and outputs: their weights did not change."""
    pdir = out / "parity"
    old = json.loads((pdir / "index.json").read_text()) if (pdir / "index.json").is_file() else {}
    kept = {k: v for k, v in old.items() if k not in models}
    keep_files = {f for v in kept.values() for f in v} | {f"{k}_torch.npz" for k in kept}
    pdir.mkdir(exist_ok=True)
    for f in pdir.iterdir():
        if f.name not in keep_files:
            f.unlink()
    manifest = json.loads((CALIB / "manifest.json").read_text())
    picks = {"classifier": manifest["crops"][::30][:8], "detector": manifest["frames"][::20][:4]}
    index = {}
    for kind in ("classifier", "detector"):
        if kind in kept:
            index[kind] = kept[kind]
            continue
        files, outs = [], {n: [] for n in NAMES[kind][1]}
        for e in picks[kind]:
            dst = pdir / Path(e["file"]).name
            shutil.copy(CALIB / e["file"], dst)
            rgb = preprocess.read_rgb(str(dst))
            x = preprocess.model_input(kind, rgb, stain_norm)
            with torch.no_grad():
                ys = models[kind](torch.from_numpy(x))
            for n, y in zip(NAMES[kind][1], ys):
                outs[n].append(y.numpy()[0])
            files.append(dst.name)
        np.savez_compressed(pdir / f"{kind}_torch.npz", **{n: np.stack(v) for n, v in outs.items()})
        index[kind] = files
    (pdir / "index.json").write_text(json.dumps(index, indent=1))
    return index


def seed_folder(out: Path) -> None:
    """Start a candidate folder from the shipped networks (manifest, model files, parity), so a
    network kept with ``--keep-*`` is the shipped one; the exported network's files are then replaced."""
    manifest = json.loads((MODELS / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / "manifest.json", out / "manifest.json")
    for entry in manifest["models"].values():
        for name in entry["files"].values():
            shutil.copy(MODELS / name, out / name)
    if (out / "parity").exists():
        shutil.rmtree(out / "parity")
    shutil.copytree(MODELS / "parity", out / "parity")


def kept_entry(kind: str, out: Path) -> dict:
    """The shipped ``kind``'s manifest entry, after checking its files are the ones it names."""
    path = out / "manifest.json"
    flag = f"--keep-{kind}"
    if not path.is_file():
        sys.exit(f"{flag}: {path} is missing; export a {kind} checkpoint with --{kind}")
    entry = json.loads(path.read_text())["models"][kind]
    for name, digest in entry["sha256"].items():
        if not (out / name).is_file() or sha256(out / name) != digest:
            sys.exit(f"{flag}: models/{name} is missing or differs from models/manifest.json; "
                     f"restore it (git checkout -- models/) or export a {kind} checkpoint with --{kind}")
    if not (out / "parity" / f"{kind}_torch.npz").is_file():
        sys.exit(f"{flag}: models/parity/{kind}_torch.npz is missing; restore models/parity/")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cls = ap.add_mutually_exclusive_group(required=True)
    cls.add_argument("--classifier", nargs="+", metavar="CKPT",
                     help="classifier checkpoint to export; several (a .pt, or a shipped classifier.onnx beside its "
                          "manifest.json) export one graph averaging their outputs (scripts.training.wbcnet.Ensemble)")
    cls.add_argument("--keep-classifier", action="store_true",
                     help="ship the classifier already in models/ unchanged (a detector-only update)")
    det = ap.add_mutually_exclusive_group(required=True)
    det.add_argument("--detector", help="detector checkpoint to export")
    det.add_argument("--keep-detector", action="store_true",
                     help="ship the detector already in models/ unchanged (a classifier-only update)")
    ap.add_argument("--version", default=None)
    ap.add_argument("--left-out", default=None, metavar="SOURCE",
                    help="the source the classifier checkpoint was trained without (--exclude-source), for a "
                         "checkpoint that does not record it; recorded in the manifest's training_data")
    ap.add_argument("--out", default=str(MODELS),
                    help="model folder to write (default models/); another folder starts as a copy of models/'s "
                         "networks, so a candidate can be scored with scripts.training.select_model "
                         "without touching models/")
    ap.add_argument("--tta-views", type=int, choices=(1, 2, 4, 8), default=None,
                    help="classifier test-time views recorded in the manifest (chosen on the val splits: "
                         "see the TTA table of models/EVALUATION.md); default 8, a kept classifier keeps its own")
    ap.add_argument("--no-detector-flip", action="store_true",
                    help="record tta_flip false (no mirrored second pass of the detector; chosen on the val frames). "
                         "Without it an exported detector gets the mirrored pass and a kept one keeps its own")
    ap.add_argument("--no-box-vote", action="store_true",
                    help="decode each peak's own box instead of the heat-weighted vote of its 3x3 neighbours "
                         "(box_vote in the manifest, chosen on the val frames)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    out = Path(args.out)
    if out.resolve() != MODELS.resolve():
        seed_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    if args.keep_classifier and args.keep_detector:
        ap.error("--keep-classifier with --keep-detector exports nothing")
    kept = {k: kept_entry(k, out) for k in ("classifier", "detector") if getattr(args, f"keep_{k}")}
    models, facts = {}, {}
    if args.classifier:
        models["classifier"], facts["classifier"] = load_classifier(args.classifier)
        stain_norm = facts["classifier"]["stain_norm"]
    else:  # the kept classifier's preprocessing; the detector's calibration does not depend on it
        stain_norm = bool(kept["classifier"].get("preprocess", {}).get("stain_norm", False))
    if args.detector:
        state = torch.load(args.detector, map_location="cpu", weights_only=False)
        models["detector"] = load_net("detector", args.detector)
        facts["detector"] = {"width": state["width"], "epoch": state["epoch"], "val": state["val"]}
    entries = {}
    for kind, model in models.items():
        calib = calibration_inputs(kind, stain_norm)
        logger.info("%s: %d calibration inputs", kind, len(calib))
        files = {"onnx": f"{kind}.onnx", "onnx_qdq": f"{kind}_qdq.onnx", "tflite_fp32": f"{kind}_fp32.tflite",
                 "tflite_int8": f"{kind}_int8.tflite"}
        export_onnx(model, kind, out / files["onnx"])
        qdq.write(out / files["onnx"], kind, out / files["onnx_qdq"], calib)
        export_tflite(model, kind, out / files["tflite_fp32"], out / files["tflite_int8"], calib)
        extra = []
        if kind == "classifier":  # the pooled features a site profile reads (edge_app.site), in every file
            for k, name in files.items():
                (embedding_outputs.add_onnx if k.startswith("onnx") else embedding_outputs.add_tflite)(out / name)
            extra = [{"name": f"{embedding_outputs.PREFIX}{i}", "shape": [1, d]}
                     for i, d in enumerate(embedding_outputs.embedding_dims(out / files["onnx"]))]
        fact = facts[kind]
        inputs, outputs = NAMES[kind]
        entries[kind] = {
            "input": {"name": inputs[0], "shape": list(input_shape(kind)), "dtype": "float32", "layout": "NHWC",
                      "range": "RGB 0..255 after edge_app.imaging.preprocess (background-referenced)"},
            "outputs": [{"name": n, "shape": s} for n, s in zip(outputs, output_shapes(model, kind))] + extra,
            "files": files,
            "sha256": {f: sha256(out / f) for f in files.values()},
            "width_multiplier": fact["width"],
        }
        if "ensemble" in fact:
            entries[kind]["ensemble"] = fact["ensemble"]
        else:
            entries[kind].update(checkpoint_epoch=fact["epoch"], val=fact["val"])
    entries.update(kept)
    entries = {k: entries[k] for k in ("classifier", "detector")}  # the manifest's usual order
    det_entry = entries["detector"]
    if "detector" in models:
        det_entry["stride"] = models["detector"].net.stride
        det_entry["tta_flip"], det_entry["box_vote"] = True, True
    else:  # a kept detector keeps the stride and decoding it was validated with (absent box_vote: it voted)
        det_entry.setdefault("box_vote", True)
    if args.no_detector_flip:
        det_entry["tta_flip"] = False
    if args.no_box_vote:
        det_entry["box_vote"] = False
    cls_entry = entries["classifier"]
    if "classifier" in models:
        cls_entry["attention_stride"] = 16
        cls_entry["preprocess"] = {"stain_norm": stain_norm, "stain_od_target": preprocess.STAIN_OD_TARGET,
                                   "stain_od_percentile": preprocess.STAIN_OD_PERCENTILE}
    if args.tta_views is not None or "classifier" in models:
        cls_entry["tta_views"] = args.tta_views or 8
    left_out = classifier_left_out(facts.get("classifier"), args.left_out)
    if left_out:  # what scripts.training.fewshot reads to know which sources the network never saw
        cls_entry["left_out_source"] = left_out
    parity = write_parity(models, stain_norm, out)
    version = args.version or dt.date.today().strftime("%Y.%m.%d")
    (w, h), c = preprocess.DETECTOR_SIZE, preprocess.CLASSIFIER_SIZE[0]
    manifest = {
        "name": "wbc-mbv2-cbam",
        "version": version,
        "classes": list(CLASSES),
        "normalisation": "in-graph: x/127.5 - 1 on RGB pixels; before the graph: edge_app.imaging.preprocess "
                         f"(background-referenced white balance, letterbox {w}x{h} / square crop {c}x{c}; "
                         "the classifier averages tta_views rotations/mirrors of each crop, the detector its frame "
                         "and the frame mirrored when tta_flip)",
        "crop_margin": preprocess.CROP_MARGIN,
        "onnx_opset": OPSET,
        "training_data": training_data(left_out),
        "calibration": "calibration/manifest.json",
        "selftest": {"min_top1_agreement": 0.9, "max_prob_abs_diff": 0.25},
        "parity": parity,
        "models": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for f in sorted(out.glob("*")):
        if f.is_file():
            logger.info("%-28s %8.1f kB", f.name, f.stat().st_size / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
