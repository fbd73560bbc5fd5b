"""Reading the datasets' labels into the training and evaluation caches (scripts/training/data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.training import data


def test_a_txl_label_line_written_twice_is_one_cell(tmp_path, monkeypatch):
    # the shape of txl_pbc/labels/test/4e2139d2-...: its one WBC listed six times, red cells twice
    (tmp_path / "txl_pbc" / "images" / "test").mkdir(parents=True)
    (tmp_path / "txl_pbc" / "labels" / "test").mkdir(parents=True)
    (tmp_path / "txl_pbc" / "images" / "test" / "f.jpg").write_bytes(b"")
    wbc, other_wbc, rbc = "0 0.48 0.51 0.33 0.34", "0 0.10 0.10 0.20 0.20", "1 0.12 0.09 0.23 0.19"
    lines = [rbc, wbc, wbc, other_wbc, rbc, wbc, wbc, wbc, wbc]
    (tmp_path / "txl_pbc" / "labels" / "test" / "f.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(data, "DATASETS", tmp_path)
    items, dropped = data._txl_items()
    assert dropped == 5
    [(split, _, boxes)] = items
    assert split == "test"
    assert boxes == [[0.48, 0.51, 0.33, 0.34], [0.10, 0.10, 0.20, 0.20]]


def test_a_txl_box_over_the_same_cell_twice_is_one_cell(tmp_path, monkeypatch):
    # txl_pbc/labels/test has one WBC boxed twice at IoU 0.74; two touching cells overlap far less
    (tmp_path / "txl_pbc" / "images" / "test").mkdir(parents=True)
    (tmp_path / "txl_pbc" / "labels" / "test").mkdir(parents=True)
    (tmp_path / "txl_pbc" / "images" / "test" / "f.jpg").write_bytes(b"")
    lines = ["0 0.500 0.500 0.200 0.200", "0 0.510 0.505 0.190 0.210", "0 0.700 0.500 0.200 0.200"]
    (tmp_path / "txl_pbc" / "labels" / "test" / "f.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(data, "DATASETS", tmp_path)
    [(_, _, boxes)], dropped = data._txl_items()
    assert dropped == 1
    assert boxes == [[0.5, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2]]


def test_a_cache_built_with_the_old_splits_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE", tmp_path)
    for name in ("det", "cls"):
        np.savez(tmp_path / f"{name}.npz", keys=np.array(["a"]), txl_repeated_dropped=np.array(0))
        with pytest.raises(SystemExit, match=f"out of date: run `python -m scripts.training.data --only {name}`"):
            data.load(name)
        np.savez(tmp_path / f"{name}.npz", keys=np.array(["a"]), cache_version=np.array(data.CACHE_VERSION))
        assert data.load(name)["keys"].tolist() == ["a"]


def test_crops_of_one_frame_have_distinct_keys_and_old_teacher_keys_map_onto_them():
    teacher_probs = pytest.importorskip("scripts.training.teacher_probs")
    old = ["basophil/BA_1.jpg", "E-11_0981.jpg", "E-11_0981.jpg", "B-30_0001.jpg"]
    assert teacher_probs.unique_crop_keys(old).tolist() == [
        "basophil/BA_1.jpg", data.crop_key("E-11_0981.jpg", 0), data.crop_key("E-11_0981.jpg", 1),
        data.crop_key("B-30_0001.jpg", 0)]
