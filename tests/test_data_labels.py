"""Reading the datasets' labels into the training and evaluation caches (scripts/data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scripts import data


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


def test_a_detector_cache_from_before_the_fix_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "det.npz", keys=np.array(["a"]))
    monkeypatch.setattr(data, "CACHE", tmp_path)
    with pytest.raises(SystemExit, match="out of date: run `python -m scripts.data --only det`"):
        data.load("det")
    np.savez(tmp_path / "det.npz", keys=np.array(["a"]), txl_repeated_dropped=np.array(0))
    assert data.load("det")["keys"].tolist() == ["a"]
