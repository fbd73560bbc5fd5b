"""The amplitude-mix style bank of training (scripts/training/train.py --style-mix).

Needs PyTorch (scripts.training.train imports it), so it is skipped where the training
extra is not installed, as CI is.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("torch")
train = pytest.importorskip("scripts.training.train")


def _cache():
    # Camera identity is written into the pixels (value = camera number), so a draw says where it came from.
    sources = np.array(["pbc"] * 300 + ["chula"] * 10 + ["bccd"] * 20 + ["txl_pbc"] * 5)
    splits = np.array(["train"] * 300 + ["train"] * 6 + ["test"] * 4 + ["train"] * 20 + ["train"] * 5)
    code = {"pbc": 1, "chula": 2, "bccd": 3, "txl_pbc": 4}
    images = np.stack([np.full((8, 8, 3), code[s], np.uint8) for s in sources])
    return {"images": images, "sources": sources, "splits": splits}


def _args(**kw):
    base = dict(style_mix=0.5, style_sources=None, exclude_source="chula", seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_bank_draws_cameras_evenly_and_never_the_left_out_one_by_default():
    bank = train.style_bank(_cache(), _args())
    assert bank.counts() == {"bccd": 20, "pbc": 300, "txl_pbc": 5}  # no chula: it is left out
    rng = np.random.default_rng(0)
    drawn = np.array([int(bank.draw(rng)[0, 0, 0]) for _ in range(3000)])
    share = np.bincount(drawn, minlength=5)[1:] / len(drawn)
    assert share[1] == 0 and np.allclose(share[[0, 2, 3]], 1 / 3, atol=0.04)  # 300 PBC crops count as 5 TXL


def test_named_sources_take_train_split_crops_only_and_the_cap_holds():
    bank = train.style_bank(_cache(), _args(style_sources="pbc,chula"))
    assert bank.counts() == {"chula": 6, "pbc": 300}  # chula's 4 test-slide crops stay out
    assert train.StyleBank(_cache()["images"], _cache()["sources"], 0, cap=7).counts()["pbc"] == 7
    assert train.style_bank(_cache(), _args(style_mix=0.0)) is None


def test_unknown_style_source_is_a_clear_error():
    with pytest.raises(SystemExit, match="no crops of \\['tecmo'\\]"):
        train.style_bank(_cache(), _args(style_sources="pbc,tecmo"))
