"""Verified cells for ``wbc-counter adapt``: from a labels CSV, or from the store.

A labels CSV has one of two headers:

- ``image,label``: one single-cell crop per row, framed as ``wbc-counter
  classify`` frames it (the detector finds the cell nearest the centre);
- ``image,x1,y1,x2,y2,label``: a whole frame and one leukocyte's box in its
  pixels, cut as the kiosk cuts a detected cell. ``label`` may be empty here:
  "a leukocyte, type not given" (not used by the head). Every leukocyte of a
  frame has its row: the frames also fit the profile's detector side (pixel
  scale, threshold: ``edge_app.site.detection``), which counts a box found
  where no row is as a false one.

``label`` is one of the six lower-case class names; image paths are relative to
the CSV's folder. Every problem is a ``LabelsError`` that names its row.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.imaging import preprocess
from edge_app.labels import CLASS_INDEX, CLASSES

logger = logging.getLogger(__name__)

CROP_HEADER = ("image", "label")
FRAME_HEADER = ("image", "x1", "y1", "x2", "y2", "label")


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the row and says what to fix."""


@dataclass
class Cell:
    image_rgb: np.ndarray  # a crop (framed later as classify frames it) or the kiosk's crop of a frame's box
    label: int | None  # class index, None = a leukocyte of unknown type
    framed: bool  # True when image_rgb is already the kiosk's crop (frame rows, store cells)
    who: str
    ref: str  # where it came from (row or cell id), for messages


@dataclass
class CellSet:
    cells: list[Cell]
    frames: int
    inputs_sha256: str
    source: str
    labelled_frames: list = field(default_factory=list)  # edge_app.site.detection.LabelledFrame, frame rows only

    def content_seed(self) -> int:
        """A seed from the cells' pixels, labels and order (not their paths): the same CSV with its images
        copied anywhere is split into fit and held-back cells the same way."""
        keys = sorted(hashlib.sha256(np.ascontiguousarray(c.image_rgb).tobytes()
                                     + str(c.label).encode()).hexdigest() for c in self.cells)
        return int(hashlib.sha256("".join(keys).encode()).hexdigest()[:8], 16)

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in CLASSES}
        for cell in self.cells:
            if cell.label is not None:
                out[CLASSES[cell.label]] += 1
        return out

    def verified_by(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells:
            if cell.label is not None:
                out[cell.who] = out.get(cell.who, 0) + 1
        return out


def read_csv(path: str | Path, who: str = "csv") -> CellSet:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from None
    digest = hashlib.sha256(raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    reader = csv.reader(text.splitlines())
    header = tuple(h.strip().lower() for h in next(reader, []))
    if header not in (CROP_HEADER, FRAME_HEADER):
        missing = [c for c in (FRAME_HEADER if len(header) > 2 else CROP_HEADER) if c not in header]
        raise LabelsError(f"{path} row 1 (header): {','.join(header) or 'empty'} is not 'image,label' or "
                          f"'image,x1,y1,x2,y2,label'" + (f" (missing column {', '.join(missing)})" if missing else ""))
    frames_mode = header == FRAME_HEADER
    cells, frame_names = [], set()
    frame_boxes: dict[str, list] = {}
    cache: dict[str, np.ndarray] = {}
    for n, row in enumerate(reader, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        where = f"{path.name} row {n}"
        if len(row) != len(header):
            raise LabelsError(f"{where}: {len(row)} fields, the header has {len(header)}")
        rec = dict(zip(header, (v.strip() for v in row)))
        label = rec["label"].lower()
        if label and label not in CLASS_INDEX:
            raise LabelsError(f"{where}: unknown label '{rec['label']}' (use one of {', '.join(CLASSES)}"
                              + (", or leave it empty for a leukocyte of unknown type)" if frames_mode else ")"))
        if not label and not frames_mode:
            raise LabelsError(f"{where}: empty label (a crop row needs one of {', '.join(CLASSES)})")
        img_path = (path.parent / rec["image"]) if rec["image"] else None
        if img_path is None:
            raise LabelsError(f"{where}: empty image path")
        if rec["image"] not in cache:
            try:
                cache[rec["image"]] = preprocess.read_rgb(str(img_path))
            except (OSError, ValueError) as exc:
                raise LabelsError(f"{where}: cannot read image {rec['image']} ({exc})") from None
            digest.update(rec["image"].encode("utf-8") + b"\0" + img_path.read_bytes())
        rgb = cache[rec["image"]]
        if frames_mode:
            try:
                box = [float(rec[k]) for k in ("x1", "y1", "x2", "y2")]
            except ValueError:
                raise LabelsError(f"{where}: x1,y1,x2,y2 must be numbers (pixels)") from None
            h, w = rgb.shape[:2]
            if not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
                raise LabelsError(f"{where}: box {box} is not inside the {w}x{h} image (x1 < x2, y1 < y2, pixels)")
            frame_names.add(rec["image"])
            frame_boxes.setdefault(rec["image"], []).append(box)
            crop = preprocess.crop_square(rgb, preprocess.square_box(box))
            cells.append(Cell(crop, CLASS_INDEX[label] if label else None, True, who, where))
        else:
            cells.append(Cell(rgb, CLASS_INDEX[label], False, who, where))
    if not any(c.label is not None for c in cells):
        raise LabelsError(f"{path}: no labelled cell (every row's label is empty, or the file has no rows)")
    from edge_app.site.detection import LabelledFrame

    frames = [LabelledFrame(name, cache[name], np.array(boxes, np.float32)) for name, boxes in frame_boxes.items()]
    return CellSet(cells, len(frame_names), digest.hexdigest(), str(path), frames)


def from_store(store, since: str | None = None) -> CellSet:
    """Verified cells of the store: ``Store.verified_cells`` where the store has it (reviews and the
    kiosk's corrections), else the kiosk's reclassifications from the corrections table."""
    import cv2

    digest = hashlib.sha256()
    cells = []
    if hasattr(store, "verified_cells"):
        rows = [(v.cell_id, v.crop_jpeg, v.label, v.user, v.at) for v in store.verified_cells(since=since)]
    else:
        rows = store_corrections(store, since)
    for cell_id, jpeg, label, who, at in rows:
        if label not in CLASS_INDEX or jpeg is None:
            continue  # "x" (not a leukocyte) and hand-added cells without a crop teach the head nothing
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("cell %s: stored crop cannot be decoded; skipped", cell_id)
            continue
        digest.update(f"{cell_id}:{label}:{who}:{at}\0".encode() + jpeg)
        cells.append(Cell(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), CLASS_INDEX[label], True, str(who or "unknown"),
                          f"cell {cell_id}"))
    if not cells:
        raise LabelsError("the store holds no verified cell with a crop"
                          + (f" since {since}" if since else "") + ": verify cells at the kiosk first")
    return CellSet(cells, 0, digest.hexdigest(), f"store{' since ' + since if since else ''}")


def store_corrections(store, since: str | None = None) -> list[tuple]:
    """(cell id, crop JPEG, label, who, when) of every cell the kiosk reclassified (latest verdict per cell)."""
    q = ("SELECT c.id, c.crop, c.label, k.operator AS who, k.at AS at FROM cells c"
         " JOIN corrections k ON k.id = (SELECT MAX(id) FROM corrections WHERE cell_id = c.id"
         " AND action = 'reclassify' AND undone = 0) WHERE c.deleted = 0")
    params: list = []
    if since:
        q += " AND k.at > ?"
        params.append(since)
    return [tuple(r) for r in store.conn.execute(q + " ORDER BY k.at, c.id", params).fetchall()]
