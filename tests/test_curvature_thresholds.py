"""catapult.instability_threshold: the closed forms, the lr it reads, the groups it refuses, and
the stability edge of SGD (with momentum and dampening) on quadratics it names (split from
test_curvature.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from catapult.curvature import instability_threshold


def params():
    return [nn.Parameter(torch.zeros(2))]


def test_thresholds_closed_form():
    assert instability_threshold(torch.optim.SGD(params(), lr=0.1)) == pytest.approx(20.0)
    assert instability_threshold(torch.optim.SGD(params(), lr=0.1, momentum=0.9)) == \
        pytest.approx(38.0)
    assert instability_threshold(torch.optim.Adam(params(), lr=1e-3)) == pytest.approx(38e3)
    # AdamW's default weight_decay=0.01 (decoupled) lowers it by wd (1 + b1) / (1 - b1) = 0.03
    assert instability_threshold(torch.optim.AdamW(params(), lr=1e-3, betas=(0.5, 0.9))) == \
        pytest.approx(3.0 / (0.5e-3) - 0.03, rel=1e-12)
    assert instability_threshold(torch.optim.AdamW(params(), lr=1e-3, betas=(0.5, 0.9), weight_decay=0.0)) == \
        pytest.approx(3.0 / (0.5e-3))
    assert instability_threshold(torch.optim.SGD(params(), lr=0.1), lr=0.5) == pytest.approx(4.0)


def test_threshold_uses_current_lr_of_first_group():
    opt = torch.optim.SGD([{"params": params(), "lr": 0.2}, {"params": params(), "lr": 0.01}],
                          lr=1.0)
    assert instability_threshold(opt) == pytest.approx(10.0)
    opt.param_groups[0]["lr"] = 0.4  # as a scheduler would
    assert instability_threshold(opt) == pytest.approx(5.0)


def test_threshold_refuses_groups_whose_momentum_or_beta1_differ():
    # the first group's momentum/betas were read and the others' ignored: 2/lr = 20 for SGD
    # groups with momentum 0 and 0.9. Independent truth on L = 0.5 * 30 * (x^2 + y^2): x (no
    # momentum, edge 20) diverges, y (momentum 0.9, edge 38) converges; no one threshold holds
    x, y = nn.Parameter(torch.ones(1, dtype=torch.float64)), nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = torch.optim.SGD([{"params": [x]}, {"params": [y], "momentum": 0.9}], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        (0.5 * 30.0 * (x ** 2 + y ** 2)).sum().backward()
        opt.step()
    assert abs(x.item()) > 1e6 and abs(y.item()) < 1e-3
    with pytest.raises(ValueError, match=r"param group 1 has momentum=0.9 and param group 0 momentum=0.0"):
        instability_threshold(opt)
    adam = torch.optim.Adam([{"params": params(), "betas": (0.0, 0.999)}, {"params": params()}], lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1 has betas\[0\]=0.9"):
        instability_threshold(adam)
    # the same rule at other lrs, or a group that does not move (lr 0, no parameters), is fine
    same = torch.optim.SGD([{"params": params()}, {"params": params(), "lr": 0.01},
                            {"params": params(), "lr": 0.0, "momentum": 0.5}, {"params": [], "momentum": 0.5}],
                           lr=0.1, momentum=0.9)
    assert instability_threshold(same) == pytest.approx(38.0)
    frozen_first = torch.optim.SGD([{"params": params(), "lr": 0.0}, {"params": params(), "momentum": 0.9}],
                                   lr=0.1)
    # a frozen first group is not the threshold's (reference_group): the one group that moves has
    # momentum 0.9, edge (2 + 2 * 0.9) / 0.1 = 38 (it was refused, as if the frozen group's 0 applied)
    assert instability_threshold(frozen_first, lr=0.1) == pytest.approx(38.0)
    assert instability_threshold(frozen_first) == pytest.approx(38.0)
    frozen_first.add_param_group({"params": params(), "momentum": 0.0})
    with pytest.raises(ValueError, match=r"param group 2 has momentum=0.0 and param group 1 momentum=0.9"):
        instability_threshold(frozen_first)


def _diverges(optimizer_factory, curvature, steps=3000):
    """Run the optimizer on L = 0.5 * curvature * theta^2 from theta = 1."""
    theta = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = optimizer_factory([theta])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * theta ** 2).sum().backward()
        opt.step()
    return not abs(theta.item()) < 1.0


@pytest.mark.parametrize("kwargs", [dict(), dict(momentum=0.9), dict(momentum=0.5, dampening=0.3),
                                    dict(momentum=0.8, nesterov=True)],
                         ids=["gd", "heavy_ball", "dampened", "nesterov"])
def test_sgd_threshold_is_the_stability_edge(kwargs):
    """Independent truth: iterate torch's SGD on a 1-D quadratic just below/above the edge."""
    def factory(p):
        return torch.optim.SGD(p, lr=0.1, **kwargs)

    edge = instability_threshold(factory(params()))
    assert not _diverges(factory, 0.99 * edge)
    assert _diverges(factory, 1.01 * edge)


@pytest.mark.parametrize("dampening, edge", [(1.0, math.inf), (1.5, 0.0)])
def test_sgd_threshold_with_full_or_more_dampening(dampening, edge):
    # (2 + 2b) / ((1 - d) lr) divided by zero at d = 1 (ZeroDivisionError) and went negative
    # above. Independent truth: torch's SGD on a quadratic. d = 1 stops reading the gradient
    # after the first step (bounded at any curvature); d > 1 climbs (diverges at any curvature)
    def factory(p):
        return torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=dampening)

    assert instability_threshold(factory(params())) == edge
    if edge == math.inf:    # at curvature 1e6 theta settles (the velocity decays as b^k)
        theta = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = factory([theta])
        trajectory = []
        for _ in range(200):
            opt.zero_grad()
            (0.5 * 1e6 * theta ** 2).sum().backward()
            opt.step()
            trajectory.append(theta.item())
        assert math.isfinite(trajectory[-1]) and trajectory[-1] == pytest.approx(trajectory[100])
    else:
        assert _diverges(factory, 1e-3, steps=20000)


def test_threshold_unknown_optimizer_errors():
    with pytest.raises(TypeError, match="Adagrad"):
        instability_threshold(torch.optim.Adagrad(params(), lr=0.1))
    with pytest.raises(TypeError, match="RMSprop"):
        instability_threshold(torch.optim.RMSprop(params(), lr=0.1))


def test_a_negative_weight_decay_is_refused_naming_it():
    # mutation pass 21 (IN5): the group's weight decay had no lower bound checked by a test (-0.5 gave 2 / lr + 0.5)
    opt = torch.optim.SGD(params(), lr=0.1)
    opt.param_groups[0]["weight_decay"] = -0.5   # (torch refuses it at construction, not in a group set later)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got -0.5"):
        instability_threshold(opt)
