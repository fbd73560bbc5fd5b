"""Index and cache the real smear data of ../shared/datasets for training.

Two caches under ``.cache/`` (git-ignored), built once by
``python -m scripts.training.data``:

- ``cls.npz``: single-cell crops (128x128 RGB uint8, *before* the shared
  preprocessing, so augmentation can act on raw camera pixels), with label,
  source and split. Crop datasets (pbc, raabin, tecom) are taken whole;
  frame datasets (chula, bccd) are cut around each labelled WBC box with the
  runtime's own ``preprocess.cell_crop``. Unlabelled WBC crops (bccd frames
  without subtype, txl_pbc frames from BCCD/Kaggle cameras) are kept with
  label -1 for semi-supervised training.
- ``det.npz``: whole frames fitted into 480x360 (letterbox-free resize that
  keeps aspect), with their WBC boxes, source and split.

Labels: the five leukocyte classes + "other" (PBC's immature granulocytes,
erythroblasts and platelets).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from edge_app.labels import CLASS_INDEX  # noqa: E402
from scripts.training.eval_metrics import iou_matrix  # noqa: E402
from scripts.training.splits import DATASETS, split_of  # noqa: E402

logger = logging.getLogger(__name__)

CACHE = ROOT / ".cache"
CROP = 128
FRAME_FIT = (480, 360)
PBC_TO_CLASS = {"ig": "other", "erythroblast": "other", "platelet": "other"}
SOURCES = ("pbc", "raabin", "tecom", "chula", "bccd", "txl_pbc")
SPLITS = ("train", "val", "test")
# 2: crop keys of frame sources are "<frame>#<n>" (n-th WBC box), splits follow
# scripts/training/split_groups.json and the Chula mirror rule.
CACHE_VERSION = 2
SAME_CELL_IOU = 0.7


def _read(path: Path) -> np.ndarray:
    return preprocess.read_rgb(str(path))


def _resize_square(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (CROP, CROP), interpolation=cv2.INTER_AREA)


def crop_key(frame: str, n: int) -> str:
    """Key of the n-th WBC crop cut from a frame: frame names alone repeat when a frame holds two cells."""
    return f"{frame}#{n}"


def _bccd_rows():
    rows: dict[str, list[dict]] = {}
    with open(DATASETS / "bccd" / "boxes.csv") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["image"], []).append(r)
    return rows


def _chula_rows():
    rows: dict[str, list[dict]] = {}
    with open(DATASETS / "chula" / "boxes.csv") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["image"], []).append(r)
    return rows


def _xyxy(cxcywh) -> np.ndarray:
    cx, cy, w, h = cxcywh
    return np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])


def _txl_items() -> tuple[list, int]:
    """(split, image path, YOLO WBC boxes) per TXL-PBC frame, and how many repeated WBC lines were dropped.

    ``split`` is the frame's split after the groups of copies (``scripts.training.splits``).
    A few label files repeat a cell: verbatim (test/4e2139d2-... lists its one
    WBC six times, with its red cells twice) or as a second box over the same
    cell (IoU 0.74 in one test frame). A cell written twice is one target, so a
    detector finding it is not charged a miss; two leukocytes never overlap
    that much (``SAME_CELL_IOU``).
    """
    out, dropped = [], 0
    for folder in SPLITS:
        for img in sorted((DATASETS / "txl_pbc" / "images" / folder).glob("*.jpg")):
            lab = DATASETS / "txl_pbc" / "labels" / folder / (img.stem + ".txt")
            boxes = []
            if lab.is_file():
                for line in lab.read_text().split("\n"):
                    parts = line.split()
                    if len(parts) == 5 and parts[0] == "0":
                        box = [float(v) for v in parts[1:]]
                        if boxes and iou_matrix(_xyxy(box), np.concatenate([_xyxy(b) for b in boxes])).max() \
                                >= SAME_CELL_IOU:
                            dropped += 1
                            continue
                        boxes.append(box)
            out.append((split_of("txl_pbc", f"{folder}/{img.name}"), img, boxes))
    return out, dropped


def build_classifier_cache() -> dict:
    images, labels, sources, splits, keys = [], [], [], [], []

    def add(img, label, source, split, key):
        images.append(_resize_square(img))
        labels.append(label)
        sources.append(source)
        splits.append(split)
        keys.append(key)

    for source in ("pbc", "raabin", "tecom"):
        with open(DATASETS / source / "labels.csv") as f:
            for r in csv.DictReader(f):
                name = PBC_TO_CLASS.get(r["label"], r["label"])
                add(_read(DATASETS / source / r["image"]), CLASS_INDEX[name], source,
                    split_of(source, r["image"]), r["image"])
        logger.info("%s: %d crops so far", source, len(images))
    for image, rows in _chula_rows().items():
        frame = _read(DATASETS / "chula" / "images" / image)
        for n, r in enumerate(r for r in rows if r["cell"] == "WBC"):
            box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
            label = CLASS_INDEX[r["wbc_type"]] if r["wbc_type"] else -1
            add(preprocess.cell_crop(frame, box), label, "chula", split_of("chula", image, r["slide"]),
                crop_key(image, n))
    for image, rows in _bccd_rows().items():
        frame = _read(DATASETS / "bccd" / "images" / image)
        for n, r in enumerate(r for r in rows if r["cell"] == "WBC"):
            box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
            label = CLASS_INDEX[r["wbc_type"]] if r["wbc_type"] else -1
            add(preprocess.cell_crop(frame, box), label, "bccd", split_of("bccd", image), crop_key(image, n))
    # Unlabelled WBCs from the other cameras of txl_pbc (not its PBC/Raabin
    # frames: those cameras are covered by labelled data, and PBC frames could
    # be the very cells of our PBC test split), from train frames only: a
    # frame that copies a held-out image has that image's split (scripts.training.dedup).
    for split, img_path, boxes in _txl_items()[0]:
        if not boxes or split != "train":
            continue
        frame = _read(img_path)
        h, w = frame.shape[:2]
        if (w, h) not in ((416, 416),):
            continue
        for n, (cx, cy, bw, bh) in enumerate(boxes):
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            add(preprocess.cell_crop(frame, box), -1, "txl_pbc", "train", crop_key(img_path.name, n))
    logger.info("classifier cache: %d crops", len(images))
    return dict(images=np.stack(images), labels=np.array(labels, np.int16), sources=np.array(sources),
                splits=np.array(splits), keys=np.array(keys), cache_version=np.array(CACHE_VERSION))


def _fit(frame: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = frame.shape[:2]
    s = min(FRAME_FIT[0] / w, FRAME_FIT[1] / h)
    return cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA), s


def build_detector_cache() -> dict:
    frames, boxes, sources, splits, keys = [], [], [], [], []
    for image, rows in _bccd_rows().items():
        frame = _read(DATASETS / "bccd" / "images" / image)
        split = split_of("bccd", image)
        small, s = _fit(frame)
        b = [[float(r[k]) * s for k in ("x1", "y1", "x2", "y2")] for r in rows if r["cell"] == "WBC"]
        frames.append(small)
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
        sources.append("bccd")
        splits.append(split)
        keys.append(image)
    for image, rows in _chula_rows().items():
        frame = _read(DATASETS / "chula" / "images" / image)
        small, s = _fit(frame)
        b = [[float(r[k]) * s for k in ("x1", "y1", "x2", "y2")] for r in rows if r["cell"] == "WBC"]
        frames.append(small)
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
        sources.append("chula")
        splits.append(split_of("chula", image, rows[0]["slide"]))
        keys.append(image)
    txl, repeated = _txl_items()
    moved = 0
    for split, img_path, yolo in txl:
        frame = _read(img_path)
        moved += split != img_path.parent.name  # a copy that follows its group's split (scripts.training.dedup)
        h, w = frame.shape[:2]
        small, s = _fit(frame)
        b = [[(cx - bw / 2) * w * s, (cy - bh / 2) * h * s, (cx + bw / 2) * w * s, (cy + bh / 2) * h * s]
             for cx, cy, bw, bh in yolo]
        frames.append(small)
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
        sources.append("txl_pbc")
        splits.append(split)
        keys.append(f"{img_path.parent.name}/{img_path.name}")
    logger.info("detector cache: %d frames (%d txl_pbc frames take the split of their group of copies, %d "
                "repeated txl_pbc WBC boxes dropped)", len(frames), moved, repeated)
    obj = np.empty(len(frames), dtype=object)
    obj[:] = frames
    bobj = np.empty(len(boxes), dtype=object)
    bobj[:] = boxes
    return dict(frames=obj, boxes=bobj, sources=np.array(sources), splits=np.array(splits), keys=np.array(keys),
                txl_moved=np.array(moved), txl_repeated_dropped=np.array(repeated),
                cache_version=np.array(CACHE_VERSION))


def load(name: str) -> dict:
    path = CACHE / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"{path} missing: run `python -m scripts.training.data` first")
    with np.load(path, allow_pickle=True) as z:
        d = {k: z[k] for k in z.files}
    if int(d.get("cache_version", 1)) != CACHE_VERSION:
        # built with the splits from before the groups of copies (or older keys): its test figures would leak
        raise SystemExit(f"{path} is out of date: run `python -m scripts.training.data --only {name}`")
    return d


def pack(dst: Path, pbc_quality: int = 75, other_quality: int = 85, splits=("train", "val")) -> None:
    """WebP-compressed copy of the classifier cache's train and val crops, small
    enough to send to a GPU machine (the device tool carries at most 64 MiB with
    the repository). PBC, the biggest and most uniform source, is squeezed
    harder; the small camera-variety sources keep more detail. Training already
    augments with JPEG artefacts, so the loss is inside what the model sees."""
    d = load("cls")
    keep = np.isin(d["splits"], splits)
    blobs = np.empty(int(keep.sum()), dtype=object)
    for j, (img, src) in enumerate(zip(d["images"][keep], d["sources"][keep])):
        q = pbc_quality if src == "pbc" else other_quality
        blobs[j] = cv2.imencode(".webp", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, q])[1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, blobs=blobs, **{k: d[k][keep] for k in ("labels", "sources", "splits", "keys")})
    logger.info("packed %d crops into %s (%.1f MB)", len(blobs), dst, dst.stat().st_size / 1e6)


def unpack(src: Path) -> None:
    with np.load(src, allow_pickle=True) as z:
        images = np.stack([cv2.cvtColor(cv2.imdecode(b, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for b in z["blobs"]])
        CACHE.mkdir(exist_ok=True)
        np.savez(CACHE / "cls.npz", images=images, cache_version=np.array(CACHE_VERSION),
                 **{k: z[k] for k in ("labels", "sources", "splits", "keys")})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("cls", "det"), default=None)
    ap.add_argument("--pack", type=Path, help="write a WebP-packed classifier cache (train/val) here and exit")
    ap.add_argument("--unpack", type=Path, help="rebuild .cache/cls.npz from a packed file and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.pack:
        pack(args.pack)
        return 0
    if args.unpack:
        unpack(args.unpack)
        return 0
    if not DATASETS.is_dir():
        raise SystemExit(f"{DATASETS} not found: the datasets folder must sit beside the repository")
    CACHE.mkdir(exist_ok=True)
    if args.only in (None, "cls"):
        np.savez(CACHE / "cls.npz", **build_classifier_cache())
    if args.only in (None, "det"):
        np.savez(CACHE / "det.npz", **build_detector_cache())
    return 0


if __name__ == "__main__":
    sys.exit(main())
