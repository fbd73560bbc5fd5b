"""Distillation targets in training (scripts/train.py --teacher).

Training needs PyTorch, which the runtime and CI do not install: these run
where the training extra is installed and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
train = pytest.importorskip("scripts.train")


def _write(path, keys, probs, trained_on=("pbc", "raabin", "chula", "bccd")):
    np.savez_compressed(path, keys=np.array(keys), probs=np.array(probs, np.float16), trained_on=np.array(trained_on))


def test_teacher_targets_follow_the_crop_order(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["a", "b", "c"], [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    got = train.teacher_targets(f, np.array(["c", "a"]))
    assert got.argmax(1).tolist() == [2, 0]


def test_a_crop_without_a_teacher_target_is_an_error(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["a"], [[1, 0, 0, 0, 0, 0]])
    with pytest.raises(SystemExit, match="no teacher target for 1 training crops"):
        train.teacher_targets(f, np.array(["a", "zz"]))


def test_a_teacher_that_saw_the_left_out_source_cannot_teach_its_loso_run(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["a"], [[1, 0, 0, 0, 0, 0]])
    with pytest.raises(SystemExit, match="cannot teach a run that leaves 'chula' out"):
        train.teacher_targets(f, np.array(["a"]), left_out="chula")
    g = tmp_path / "loso.npz"
    _write(g, ["a"], [[1, 0, 0, 0, 0, 0]], trained_on=("pbc", "raabin", "bccd"))
    assert train.teacher_targets(g, np.array(["a"]), left_out="chula").shape == (1, 6)


def test_distillation_loss_is_zero_only_when_the_student_agrees():
    teacher = torch.tensor([[0.7, 0.2, 0.05, 0.03, 0.01, 0.01]])
    # logits whose softmax at T=2 equals the teacher's distribution softened by T
    agreeing = torch.log(teacher) * 1.0
    assert float(train.distillation_loss(agreeing, teacher, 2.0)) == pytest.approx(0.0, abs=1e-5)
    disagreeing = torch.log(teacher.flip(1))
    assert float(train.distillation_loss(disagreeing, teacher, 2.0)) > 0.5
