"""``wbc-counter adapt``: fit a site profile on verified cells; or revert the one in use.

    wbc-counter adapt --labels FILE.csv --out DIR [--model-dir DIR] [--name NAME] [--held-back FILE.csv]
    wbc-counter adapt --from-store [--data-dir D] [--since DATE] --out DIR
    wbc-counter adapt --revert --config FILE

The cells are run through the kiosk's own classifier (its backend, precision
and views, without any profile in force) and a quarter of each class (at least
one cell of every class with two or more) is held back (or ``--held-back``
names the cells to score on, and every ``--labels`` cell is fitted). The head
(``edge_app.site.head``) is fitted on the rest; the network and the profile
are then both scored on the held-back cells. A profile worse than the network
on them is refused and nothing is written. The last stdout line is one JSON
object (the contract):

    {"profile": DIR, "cells": {"neutrophil": n, ...}, "frames": F,
     "held_back": {"n": N, "before": ACC, "after": ACC}}

A bad CSV (missing column, unknown label, unreadable image) exits 2 and names
the row; a refused profile exits 1. With frame rows the profile also records
the camera's pixel scale measured from the frames and a detector threshold
fitted on them (``edge_app.site.detection``), and the JSON line adds
``"detector": {"pixel_scale", "threshold", "threshold_fitted", "held_back"}``.
``--revert`` removes ``[model] site`` from the TOML config file (the profile folder is kept), so the next start counts
with the network alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_app.config import load_config
from edge_app.labels import CLASSES

logger = logging.getLogger(__name__)

HELD_BACK_FRACTION = 0.25


def add_parser(sub):
    p = sub.add_parser("adapt", help="fit a site profile on verified cells (or --revert it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", type=Path, metavar="FILE.csv",
                     help="header image,label (crops) or image,x1,y1,x2,y2,label (frames); paths relative to it")
    src.add_argument("--from-store", action="store_true", help="the verified cells of the store (--data-dir)")
    src.add_argument("--revert", action="store_true",
                     help="remove [model] site from the --config file: count with the network alone")
    p.add_argument("--out", type=Path, help="the profile folder to write")
    p.add_argument("--held-back", type=Path, default=None, metavar="FILE.csv",
                   help="score the profile on these verified cells (same format) instead of holding back a "
                        "quarter of the --labels cells")
    p.add_argument("--since", default=None, help="with --from-store: only cells verified after this (ISO date)")
    p.add_argument("--name", default=None, help="the profile's name, shown on the screen (default: the folder's)")
    p.add_argument("--model-dir", default=None, help="folder with manifest.json (default: shipped models/)")
    return p


def main(args) -> int:
    if args.revert:
        return revert(args.config)
    if args.out is None:
        print("wbc-counter adapt: error: --out DIR is required (the profile folder to write)", file=sys.stderr)
        return 2
    from edge_app.site import cells as site_cells

    held = None
    try:
        if args.held_back is not None:
            held = site_cells.read_csv(args.held_back)
        if args.labels is not None:
            cellset = site_cells.read_csv(args.labels)
        else:
            from edge_app import paths
            from edge_app.store import Store

            if not paths.db_path(args.data_dir).is_file():
                print(f"wbc-counter adapt: error: no database in {args.data_dir} (pass --data-dir of the kiosk)",
                      file=sys.stderr)
                return 2
            with Store(args.data_dir) as store:
                cellset = site_cells.from_store(store, args.since)
    except site_cells.LabelsError as exc:
        print(f"wbc-counter adapt: error: {exc}", file=sys.stderr)
        return 2
    return fit_and_write(args, cellset, held)


def _bundle(args):
    from edge_app.model.bundle import ModelBundle

    cfg = load_config(args.config, {"model.dir": args.model_dir})
    cfg.model.site = None  # fitted against the network alone, never on top of the profile in force
    return ModelBundle.from_config(cfg, args.data_dir)


def held_back_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask of held-back cells: a quarter of each class, at least one of a class with two or more."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        ix = np.nonzero(labels == c)[0]
        if len(ix) >= 2:
            mask[rng.choice(ix, max(1, int(round(HELD_BACK_FRACTION * len(ix)))), replace=False)] = True
    return mask


def _features(bundle, cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, network probabilities, labels) of the labelled cells, framed as ``classify`` frames them."""
    from edge_app.imaging import framing

    labelled = [c for c in cells if c.label is not None]
    emb, probs = [], []
    for cell in labelled:
        crop = cell.image_rgb if cell.framed else framing.frame_cell(bundle.detector, cell.image_rgb)
        res = bundle.classifier(crop)
        emb.append(res.embedding)
        probs.append(res.probs)
    return np.stack(emb), np.stack(probs), np.array([c.label for c in labelled], int)


def fit_and_write(args, cellset, held_set=None) -> int:
    from edge_app.site import head as site_head
    from edge_app.site import profile as site_profile

    bundle = _bundle(args)
    try:
        if not bundle.manifest.has_embedding:
            print(f"wbc-counter adapt: error: the model in {bundle.manifest.dir} outputs no embedding; install a "
                  "model release with embedding outputs", file=sys.stderr)
            return 2
        x, shipped, y = _features(bundle, cellset.cells)
        if held_set is not None:  # an explicit held-back set: every --labels cell is fitted
            hx, hshipped, hy = _features(bundle, held_set.cells)
            x, shipped, y = np.concatenate([x, hx]), np.concatenate([shipped, hshipped]), np.concatenate([y, hy])
        w0, b0 = site_head.shipped_head(bundle.manifest.file("classifier", "onnx"))
        if held_set is not None:
            hold = np.arange(len(y)) >= len(y) - len(hy)
        else:
            hold = held_back_split(y, cellset.content_seed())
        if not hold.any() or hold.all():
            print("wbc-counter adapt: error: too few verified cells to check a profile: it needs at least two "
                  "cells of one class (one is held back to test it)", file=sys.stderr)
            return 2
        name = args.name or Path(args.out).name
        head = site_head.fit(x[~hold], y[~hold], w0, b0, name=name)
        before = float((shipped[hold].argmax(1) == y[hold]).mean())
        after = float((head.mix(x[hold], shipped[hold]).argmax(1) == y[hold]).mean())
        held = {"n": int(hold.sum()), "before": round(before, 4), "after": round(after, 4)}
        if after < before:
            print(f"wbc-counter adapt: refused: on {held['n']} held-back verified cells the profile is worse than "
                  f"the shipped model ({after:.3f} vs {before:.3f} correct); nothing was written. Verify more "
                  "cells (every class) and adapt again", file=sys.stderr)
            print(json.dumps({"profile": None, "cells": cellset.counts(), "frames": cellset.frames,
                              "held_back": held, "refused": "worse than the shipped model on held-back cells"}))
            return 1
        data = {
            "name": name,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": bundle.manifest.data.get("name"), "version": bundle.version,
                      "classifier_onnx_sha256": bundle.manifest.entry("classifier")["sha256"][
                          bundle.manifest.entry("classifier")["files"]["onnx"]]},
            "fitted_with": {"backend": bundle.backend_name, "precision": bundle.precision,
                            "views": bundle.classifier.views},
            "inputs": {"source": cellset.source, "sha256": cellset.inputs_sha256,
                       **({"held_back": held_set.source, "held_back_sha256": held_set.inputs_sha256}
                          if held_set is not None else {})},
            "cells": cellset.counts(),
            "fitted_cells": int((~hold).sum()),
            "verified_by": cellset.verified_by(),
            "frames": cellset.frames,
            "held_back": held,
            "head": {"lambda": site_head.DEFAULT_LAMBDA} if head.method != "prototype" else {},
        }
        if cellset.labelled_frames:  # whole frames: the camera's pixel scale and a detector threshold too
            from edge_app.site import detection as site_detection

            data["detector"] = site_detection.fit(bundle, cellset.labelled_frames)
        sha = site_profile.write(args.out, data, head)
        logger.info("site profile %s written (sha256 %s)", args.out, sha[:12])
    finally:
        bundle.close()
    print(f"site profile '{name}' fitted on {int((~hold).sum())} cells; held back {held['n']}: "
          f"network {before:.3f}, profile {after:.3f}")
    out = {"profile": str(args.out), "cells": {c: cellset.counts()[c] for c in CLASSES},
           "frames": cellset.frames, "held_back": held}
    if "detector" in data:
        thr = data["detector"]["threshold"]
        out["detector"] = {"pixel_scale": data["detector"]["pixel_scale"]["factor"], "threshold": thr["value"],
                           "threshold_fitted": thr["fitted"], "held_back": thr.get("held_back")}
        print(f"detector: pixel scale {out['detector']['pixel_scale']:.2f}, threshold {thr['value']:.2f} "
              + ("(fitted)" if thr["fitted"] else f"(shipped: {thr.get('why', '')})"))
    print(json.dumps(out))
    return 0


_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")
_SITE = re.compile(r"^\s*site\s*=")


def revert(config: Path | None) -> int:
    """Remove ``site = ...`` from the ``[model]`` table of a TOML config, atomically."""
    if config is None:
        print("wbc-counter adapt --revert: error: pass --config FILE (the kiosk's config); without a config no "
              "profile is in force, and a --site on the command line is reverted by leaving it out", file=sys.stderr)
        return 2
    if config.suffix.lower() not in (".toml", ""):
        print(f"wbc-counter adapt --revert: error: {config} is not TOML: delete the 'site' key under 'model' "
              "by hand", file=sys.stderr)
        return 2
    lines = config.read_text(encoding="utf-8").splitlines(keepends=True)
    section, kept, removed = None, [], None
    for line in lines:
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip()
        if section == "model" and _SITE.match(line) and removed is None:
            removed = line.strip()
            continue
        kept.append(line)
    if removed is None:
        print(json.dumps({"config": str(config), "reverted": False, "site": None}))
        return 0
    load_config_text("".join(kept), config)
    fd, tmp = tempfile.mkstemp(prefix=f".{config.name}.", dir=config.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(kept))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, config.stat().st_mode & 0o777)
    os.replace(tmp, config)
    print(f"site profile removed from {config} ({removed}); the next start counts with the network alone")
    print(json.dumps({"config": str(config), "reverted": True, "removed": removed,
                      "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}))
    return 0


def load_config_text(text: str, like: Path) -> None:
    """Check the edited config still loads before it replaces the file (never leave a kiosk unstartable)."""
    fd, tmp = tempfile.mkstemp(suffix=".toml", dir=like.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_config(tmp)
    finally:
        os.unlink(tmp)
