"""Train/val/test splits of ../shared/datasets, fixed and documented.

Splits are by slide or source wherever the data says where an image came from
(see ../shared/datasets/README.md, "Leakage"):

- ``chula``: by slide. Consecutive frames of one slide are near-identical and
  each slide holds one class, so whole slides are held out. A slide that is
  another slide mirrored (``CHULA_MIRRORS``) takes that slide's split.
- ``bccd``: by frame (one frame = one field; no slide ids), deterministic hash
  buckets.
- ``pbc`` and ``raabin``: crops without slide ids; deterministic hash buckets.
- ``txl_pbc``: its own train/val/test folders.
- ``tecom``: test only (an external source no model is tuned on).

Copies of one image in different splits (TXL-PBC's copies of BCCD frames,
resized, mirrored or rotated; repeats inside TXL-PBC, PBC and Raabin) are found
by ``python -m scripts.training.dedup``, which writes ``split_groups.json`` beside this
file: every member of a group takes the group's split (rules in
``scripts/training/dedup.py``). The file is committed, so no run has to re-read every
image to know a split.

Never tune anything on ``test``.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"

CHULA_TEST_SLIDES = frozenset({"B-53", "E-13", "E-14", "L-5B", "L-5Bb", "N-1B"})
CHULA_VAL_SLIDES = frozenset({"B-42", "E-8"})
# HF-M-8 is M-8 flipped left-right (HF-M-8_0037 matches M-8_0037
# mirrored within 2 grey levels); it was a test slide until 1.7.0.
CHULA_MIRRORS = {"HF-M-8": "M-8"}
GROUPS_FILE = Path(__file__).resolve().parent / "split_groups.json"
SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


@lru_cache(maxsize=1)
def _group_splits() -> dict[tuple[str, str], str]:
    """(source, key) -> split for every image in a group of copies (scripts.training.dedup)."""
    if not GROUPS_FILE.is_file():
        raise FileNotFoundError(f"{GROUPS_FILE} missing: run python -m scripts.training.dedup")
    groups = json.loads(GROUPS_FILE.read_text())["groups"]
    return {(m["source"], m["key"]): g["split"] for g in groups for m in g["members"]}


def _bucket(key: str) -> int:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100


def hash_split(key: str, test: int = 15, val: int = 10) -> str:
    b = _bucket(key)
    return "test" if b < test else "val" if b < test + val else "train"


def split_of(source: str, key: str, slide: str | None = None, raw: bool = False) -> str:
    """'train', 'val' or 'test' for one image of a source.

    ``key`` is the image's path relative to the source folder (as in its CSV;
    ``<split>/<file>`` for txl_pbc); ``slide`` is needed for chula. ``raw``
    skips the groups of copies (``scripts.training.dedup`` uses it to find them).
    """
    if source == "chula":
        if slide is None:
            raise ValueError("chula needs the slide id")
        slide = CHULA_MIRRORS.get(slide, slide)
        return "test" if slide in CHULA_TEST_SLIDES else "val" if slide in CHULA_VAL_SLIDES else "train"
    if not raw and source in ("bccd", "txl_pbc", "pbc", "raabin"):
        grouped = _group_splits().get((source, key))
        if grouped is not None:
            return grouped
    if source == "bccd":
        return hash_split(key, test=20, val=10)
    if source in ("pbc", "raabin"):
        return hash_split(key)
    if source == "tecom":
        return "test"
    if source == "txl_pbc":
        return key.split("/")[0]  # images/<split>/... -> given as "<split>/<file>"
    raise ValueError(f"unknown source {source}")
