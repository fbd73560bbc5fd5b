"""Train/val/test splits of ../shared/datasets, fixed and documented.

Splits are by slide or source wherever the data says where an image came from
(see ../shared/datasets/README.md, "Leakage"):

- ``chula``: by slide. Consecutive frames of one slide are near-identical and
  each slide holds one class, so whole slides are held out.
- ``bccd``: by frame (one frame = one field; no slide ids), deterministic hash
  buckets. ``txl_pbc`` frames that duplicate a held-out BCCD frame are removed
  from training by ``scripts/data.py`` (image hash after resizing).
- ``pbc`` and ``raabin``: crops without slide ids; deterministic hash buckets.
- ``txl_pbc``: its own train/val/test folders.
- ``tecom``: test only (an external source no model is tuned on).

Never tune anything on ``test``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"

CHULA_TEST_SLIDES = frozenset({"B-53", "E-13", "E-14", "L-5B", "L-5Bb", "HF-M-8", "N-1B"})
CHULA_VAL_SLIDES = frozenset({"B-42", "E-8"})


def _bucket(key: str) -> int:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100


def hash_split(key: str, test: int = 15, val: int = 10) -> str:
    b = _bucket(key)
    return "test" if b < test else "val" if b < test + val else "train"


def split_of(source: str, key: str, slide: str | None = None) -> str:
    """'train', 'val' or 'test' for one image of a source.

    ``key`` is the image's path relative to the source folder (as in its CSV);
    ``slide`` is needed for chula.
    """
    if source == "chula":
        if slide is None:
            raise ValueError("chula needs the slide id")
        return "test" if slide in CHULA_TEST_SLIDES else "val" if slide in CHULA_VAL_SLIDES else "train"
    if source == "bccd":
        return hash_split(key, test=20, val=10)
    if source in ("pbc", "raabin"):
        return hash_split(key)
    if source == "tecom":
        return "test"
    if source == "txl_pbc":
        return key.split("/")[0]  # images/<split>/... -> given as "<split>/<file>"
    raise ValueError(f"unknown source {source}")
