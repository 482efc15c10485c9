"""Ops whose output jumps -- ``round``, ``floor``, ``ceil``, ``trunc``, ``sign``/``sgn``, and the sawtooths
``frac``, ``remainder``, ``fmod`` -- make the gradients of the layers after them jump, so a float32 difference
step crosses them as it crosses a ReLU's kink: ``coarse="auto"``'s difference level was tried and its kink
check skipped it after 2 gradients (bench/fd_kinks.py: gap 2 on every direction measured, the unchecked
products 5-14 times ``||H v||`` off). ``twice.KINKED_NODES`` now names them, so ``HessianOperator.kinked``
marks them and ``"auto"`` starts at the sub-batch levels. Truth: the check's own measurement, the gap between
the forward and backward differences along random directions (above the 0.1 that skips the level), and the
op's node in the loss's graph. ``torch.where`` stays out (a fixed mask is smooth: gap below 0.01), and
``clamp`` with tensor bounds was marked already."""
from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import HessianOperator
from catapult.curvature.coarse import COARSE_LEVELS, FINITE_DIFFERENCE_CONSISTENCY, difference_consistency

STEPS = {"round": lambda h: torch.round(4 * h.tanh()) / 4, "floor": lambda h: torch.floor(4 * h.tanh()) / 4,
         "ceil": lambda h: torch.ceil(4 * h.tanh()) / 4, "trunc": lambda h: torch.trunc(4 * h.tanh()) / 4,
         "round(decimals)": lambda h: torch.round(h.tanh(), decimals=1),
         "frac": lambda h: (4 * h.tanh()).frac(), "remainder": lambda h: torch.remainder(4 * h.tanh(), 1.0),
         "fmod": lambda h: torch.fmod(4 * h.tanh(), 1.0), "sign": torch.sign, "sgn": torch.sgn}
SMOOTH = {"tanh": torch.tanh, "where (a fixed mask)": lambda h: torch.where(
    torch.arange(h.shape[-1]) % 3 > 0, h.tanh(), torch.zeros_like(h))}


class Net(nn.Module):
    def __init__(self, act, clamp_bound: bool = False):
        super().__init__()
        self.l1, self.l2, self.act = nn.Linear(16, 32), nn.Linear(32, 10), act
        self.bound = nn.Parameter(torch.full((32,), 0.5)) if clamp_bound else None

    def forward(self, x):
        h = self.l1(x)
        return self.l2(torch.clamp(h, -self.bound, self.bound) if self.bound is not None else self.act(h))


def _problem(act, n=512, clamp_bound=False):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    return Net(act, clamp_bound), nn.CrossEntropyLoss(), (torch.randn(n, 16, generator=gen),
                                                          torch.randint(0, 10, (n,), generator=gen))


def _gap(model, loss_fn, batch) -> float:
    """The median over 3 random unit directions of the difference level's check (float32)."""
    op = HessianOperator(model, loss_fn, batch)
    gaps = []
    for seed in (1, 2, 3):
        v = torch.randn(op.numel, generator=torch.Generator().manual_seed(seed))
        gaps.append(difference_consistency(op, v / v.norm())[0])
    return statistics.median(gaps)


def _nodes(model, loss_fn, batch) -> set[str]:
    names, stack = set(), [loss_fn(model(batch[0]), batch[1]).grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(f for f, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", list(STEPS))
def test_an_op_that_jumps_is_marked_kinked(name):
    model, loss_fn, batch = _problem(STEPS[name])
    op_name = {"round(decimals)": "Round"}.get(name, name.capitalize())
    assert any(node.startswith(op_name + "Backward") for node in _nodes(model, loss_fn, batch))
    assert _gap(model, loss_fn, batch) > FINITE_DIFFERENCE_CONSISTENCY     # the step crosses its jumps
    assert HessianOperator(model, loss_fn, batch).kinked


@pytest.mark.parametrize("name", list(SMOOTH))
def test_a_smooth_op_and_a_where_on_a_fixed_mask_are_not(name):
    model, loss_fn, batch = _problem(SMOOTH[name])
    assert _gap(model, loss_fn, batch) < 0.01
    assert not HessianOperator(model, loss_fn, batch).kinked


def test_clamp_with_tensor_bounds_was_marked_already():
    model, loss_fn, batch = _problem(None, clamp_bound=True)
    assert "ClampBackward0" in _nodes(model, loss_fn, batch)
    assert _gap(model, loss_fn, batch) > FINITE_DIFFERENCE_CONSISTENCY
    assert HessianOperator(model, loss_fn, batch).kinked


def test_auto_starts_a_rounding_model_at_the_sub_batch_levels():
    # before, "auto" tried the difference level, whose check skipped it after 2 gradients
    model, loss_fn, batch = _problem(STEPS["round"])
    auto = catapult.sharpness(model, loss_fn, batch)
    sub = catapult.sharpness(model, loss_fn, batch, coarse=list(COARSE_LEVELS))
    assert (auto.matvecs, auto.coarse_matvecs, auto.value, auto.coarse_cost) == \
        (sub.matvecs, sub.coarse_matvecs, sub.value, sub.coarse_cost)
