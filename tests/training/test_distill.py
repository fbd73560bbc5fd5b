"""Distillation targets in training (scripts/training/train.py --teacher).

Training needs PyTorch, which the runtime and CI do not install: these run
where the training extra is installed and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
train = pytest.importorskip("scripts.training.train")


def _write(path, keys, probs, trained_on=("pbc", "raabin", "chula", "bccd")):
    np.savez_compressed(path, keys=np.array(keys), probs=np.array(probs, np.float16), trained_on=np.array(trained_on))


def test_teacher_targets_follow_the_crop_order(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["a", "b", "c"], [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    got, have = train.teacher_targets(f, np.array(["c", "a"]))
    assert got.argmax(1).tolist() == [2, 0]
    assert have.tolist() == [True, True]


def test_a_few_crops_without_a_teacher_target_learn_from_their_label_and_many_are_an_error(tmp_path):
    f = tmp_path / "t.npz"
    keys = [f"k{j}" for j in range(200)]
    _write(f, keys, [[1, 0, 0, 0, 0, 0]] * 200)
    got, have = train.teacher_targets(f, np.array(keys[:199] + ["new"]))
    assert have.tolist() == [True] * 199 + [False]
    assert got[-1].sum() == 0
    with pytest.raises(SystemExit, match="no teacher target for 3 of 200 training crops"):
        train.teacher_targets(f, np.array(keys[:197] + ["x", "y", "z"]))


def test_a_teacher_file_with_repeated_keys_is_refused(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["frame.jpg", "frame.jpg"], [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
    with pytest.raises(SystemExit, match="re-key it"):
        train.teacher_targets(f, np.array(["frame.jpg"]))


def test_the_loss_of_a_crop_without_a_teacher_target_is_its_cross_entropy_alone():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    teacher = torch.softmax(torch.randn(4, 6), 1)
    plain = train.classifier_loss(logits, y)
    assert float(train.classifier_loss(logits, y, teacher, torch.zeros(4, dtype=torch.bool))) == pytest.approx(
        float(plain))
    mixed = train.classifier_loss(logits, y, teacher, torch.ones(4, dtype=torch.bool), 0.5, 2.0)
    expected = 0.5 * plain + 0.5 * train.distillation_loss(logits, teacher, 2.0)
    assert float(mixed) == pytest.approx(float(expected), rel=1e-5)


def test_a_teacher_that_saw_the_left_out_source_cannot_teach_its_loso_run(tmp_path):
    f = tmp_path / "t.npz"
    _write(f, ["a"], [[1, 0, 0, 0, 0, 0]])
    with pytest.raises(SystemExit, match="cannot teach a run that leaves 'chula' out"):
        train.teacher_targets(f, np.array(["a"]), left_out="chula")
    g = tmp_path / "loso.npz"
    _write(g, ["a"], [[1, 0, 0, 0, 0, 0]], trained_on=("pbc", "raabin", "bccd"))
    assert train.teacher_targets(g, np.array(["a"]), left_out="chula")[0].shape == (1, 6)


def test_distillation_loss_is_zero_only_when_the_student_agrees():
    teacher = torch.tensor([[0.7, 0.2, 0.05, 0.03, 0.01, 0.01]])
    # logits whose softmax at T=2 equals the teacher's distribution softened by T
    agreeing = torch.log(teacher) * 1.0
    assert float(train.distillation_loss(agreeing, teacher, 2.0)) == pytest.approx(0.0, abs=1e-5)
    disagreeing = torch.log(teacher.flip(1))
    assert float(train.distillation_loss(disagreeing, teacher, 2.0)) > 0.5
