"""The splits keep copies of one image together (scripts/training/splits.py, scripts/training/dedup.py).

The datasets hold copies in different splits: Chula's test slide HF-M-8 is
train slide M-8 mirrored, TXL-PBC holds resized, mirrored and rotated copies of
BCCD test frames in its train folder, and PBC and Raabin hold a few photos
twice. The splits give each group of copies one split. Needs ../shared/datasets
(CI has it beside the clone).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from scripts.training import dedup
from scripts.training.splits import DATASETS, GROUPS_FILE, split_of

CHULA = DATASETS / "chula" / "images"
pytestmark = pytest.mark.skipif(not CHULA.is_dir(), reason="needs ../shared/datasets")


def _mirror_difference(a: str, b: str) -> float:
    x, y = (cv2.imread(str(CHULA / n)).astype(np.float32) for n in (a, b))
    return float(np.abs(x - y[:, ::-1]).mean())


def test_hf_m_8_is_a_mirror_of_m_8():
    # the same frame flipped (about 2 grey levels apart); unflipped they differ by about 14
    assert _mirror_difference("HF-M-8_0037.jpg", "M-8_0037.jpg") < 4
    assert _mirror_difference("HF-M-8_0037.jpg", "M-8_0073.jpg") > 8


def test_a_mirrored_chula_slide_shares_the_split_of_its_original():
    assert split_of("chula", "HF-M-8_0037.jpg", "HF-M-8") == split_of("chula", "M-8_0037.jpg", "M-8") == "train"


def test_a_resized_mirrored_copy_of_a_frame_is_found_and_another_frame_is_not():
    names = ["BloodImage_00223.jpg", "BloodImage_00010.jpg"]
    frames = [cv2.imread(str(DATASETS / "bccd" / "images" / n)) for n in names]
    copy = cv2.resize(frames[0], (416, 416), interpolation=cv2.INTER_AREA)[:, ::-1]
    thumbs = []
    for img in frames + [copy]:
        g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (dedup.THUMB, dedup.THUMB),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
        thumbs.append(((g - g.mean()) / (g.std() + 1e-6)).ravel())
    pairs = dedup.copy_pairs(np.stack(thumbs), transforms=True)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)]
    assert dedup.copy_pairs(np.stack(thumbs), transforms=False) == []  # the mirror needs the transforms


def test_every_copy_takes_its_group_split_and_bccd_keeps_its_own():
    groups = json.loads(GROUPS_FILE.read_text())["groups"]
    assert groups
    for g in groups:
        for m in g["members"]:
            assert split_of(m["source"], m["key"]) == g["split"], m
            if m["source"] == "bccd":
                assert m["was"] == g["split"]
    # a BCCD test frame whose TXL-PBC copies sat in TXL-PBC's train folder
    assert split_of("bccd", "BloodImage_00223.jpg") == "test"
    assert split_of("txl_pbc", "train/280204a0-b130-5cf4-ab2f-6c23f34bc6c1.jpg") == "test"


@pytest.mark.slow
def test_the_committed_groups_are_what_dedup_finds_in_the_data():
    # Re-reads every BCCD and TXL-PBC frame and every PBC and Raabin photo (about
    # 20 s): a change to the data or to the rules without `python -m scripts.training.dedup`
    # fails here.
    found, _ = dedup.find_groups()
    committed = json.loads(GROUPS_FILE.read_text())["groups"]
    assert [(g["split"], g["members"]) for g in found] == [(g["split"], g["members"]) for g in committed]


def test_a_txl_pbc_copy_of_a_pbc_test_photo_is_held_out_with_it():
    groups = json.loads(GROUPS_FILE.read_text())["groups"]
    pbc_test = [g for g in groups if g["split"] == "test"
                and any(m["source"] == "pbc" and m["was"] == "test" for m in g["members"])
                and any(m["source"] == "txl_pbc" and m["was"] == "train" for m in g["members"])]
    assert len(pbc_test) >= 40  # 51 when the grouping was made
    for g in pbc_test:
        for m in g["members"]:
            assert split_of(m["source"], m["key"]) == "test"
