"""The training weight average (scripts/training/train.py --ema, --ema-warmup).

Training needs PyTorch, which the runtime and CI do not install: these run
where the training extra is installed and are skipped elsewhere.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
train = pytest.importorskip("scripts.training.train")


def _net(value: float) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def _weight(ema) -> float:
    return float(ema.model[0].weight[0, 0])


def test_without_warmup_the_decay_is_constant_so_earlier_runs_replay():
    live = _net(0.0)
    ema = train.WeightAverage(live, 0.999)
    with torch.no_grad():
        live[0].weight.fill_(1.0)
    for _ in range(10):
        ema.update(live)
    # ten updates at 0.999: the initial weights still hold 0.999**10 of the average
    assert _weight(ema) == pytest.approx(1.0 - 0.999 ** 10, rel=1e-5)


def test_warmup_lets_the_average_leave_the_initial_weights_early():
    live = _net(0.0)
    ema = train.WeightAverage(live, 0.999, warmup=100)
    assert ema.step_decay() == 0.0  # before any update the ramp starts at zero
    with torch.no_grad():
        live[0].weight.fill_(1.0)
    ema.update(live)
    assert _weight(ema) == pytest.approx(1.0 - 0.999 * (1 - math.exp(-1 / 100)), rel=1e-5)
    for _ in range(199):
        ema.update(live)
    constant = train.WeightAverage(_net(0.0), 0.999)
    for _ in range(200):
        constant.update(live)
    assert _weight(ema) > 0.99 > _weight(constant)
    # late in a run the ramp has reached the set decay
    ema.updates = 10_000
    assert ema.step_decay() == pytest.approx(0.999, abs=1e-9)


def test_the_option_reaches_the_average():
    args = train.parse_args(["classifier", "--out", "x", "--ema-warmup", "500"])
    ema = train.averaged(_net(0.0), args)
    assert (ema.decay, ema.warmup) == (0.999, 500)
    assert train.averaged(_net(0.0), train.parse_args(["classifier", "--out", "x"])).warmup == 0
