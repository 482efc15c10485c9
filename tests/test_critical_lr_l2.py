"""critical_lr with coupled L2 (SGD, Adam, RAdam ``weight_decay``): the step descends
``J = L + wd/2 ||theta||^2`` and its instability threshold is that of ``H + wd I``
(``2 / lr - wd``), but the search read the rise of ``L`` alone, so its ``lr_c`` disagreed with the
threshold the rows are compared with (1.3x on the quadratic below). Truth: the closed form on a
quadratic ``L = 1/2 (x - x*)^T A (x - x*)``: along the step's direction ``u``, ``J(x - lr u)``
rises past ``lr_J = 2 grad_J . u / u^T (A + wd I) u``; ``L`` alone past ``lr_L = 2 grad_L . u /
u^T A u``, which decoupled decay (AdamW) still reads."""
from __future__ import annotations

import pytest
import torch

from catapult import critical_lr
from catapult.critical_lr import coupled_l2_penalty, next_step_direction

A = torch.diag(torch.tensor([10.0, 1.0, 3.0], dtype=torch.float64))
TARGET = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
WD = 2.0
BATCH = (torch.zeros(1, dtype=torch.float64), None)


class Point(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64))

    def forward(self, inputs):
        return self.x + 0 * inputs.sum()


def loss(out, _):
    return 0.5 * (out - TARGET) @ A @ (out - TARGET)


OPTIMIZERS = {"sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=WD), True),
              "adam": (lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=WD), True),
              "radam": (lambda ps: torch.optim.RAdam(ps, lr=0.1, weight_decay=WD), True),
              "adamw": (lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=WD), False)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_search_reads_the_objective_the_step_descends(name):
    build, coupled = OPTIMIZERS[name]
    model = Point()
    opt = build(model.parameters())
    x = model.x.detach()
    grad_l = A @ (x - TARGET)
    (_, u), = next_step_direction(opt, {model.x: grad_l})   # (its rule adds the coupled wd x itself)
    if coupled:
        truth = 2 * float((grad_l + WD * x) @ u) / float(u @ (A + WD * torch.eye(3, dtype=torch.float64)) @ u)
    else:
        truth = 2 * float(grad_l @ u) / float(u @ A @ u)
    res = critical_lr(model, loss, BATCH, opt, delta=1e-12, rtol=1e-9)
    assert res.lr == pytest.approx(truth, rel=1e-7)
    if coupled:   # the loss alone rises elsewhere: the answer was that
        assert abs(2 * float(grad_l @ u) / float(u @ A @ u) / truth - 1) > 0.05


def test_coupled_l2_penalty_refuses_pairs_that_are_not_the_optimizers_by_name():
    """Its pairs are next_step_direction's: a parameter the optimizer does not hold was a bare
    ``KeyError: 140430256880160`` (an id), a step of another size torch's copy error."""
    w, other = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, weight_decay=1.0)
    with pytest.raises(ValueError, match=r"coupled_l2_penalty: direction\[1\]'s parameter is not one of the optimizer's"):
        coupled_l2_penalty(opt, [(w, torch.ones(2)), (other, torch.ones(2))])
    with pytest.raises(ValueError, match=r"coupled_l2_penalty: direction\[0\] has a step of shape \(3,\) for a parameter "
                                         r"of shape \(2,\)"):
        coupled_l2_penalty(opt, [(w, torch.ones(3))])
    assert coupled_l2_penalty(opt, [(w, torch.ones(2))])(1.0) == 0.0      # wd/2 ||1 - 1 * 1||^2


def test_the_penalty_of_a_float32_parameter_is_summed_in_float64():
    # (mutation pass 18, CL10) theta = (1, 2**-13): ||theta||^2 = 1 + 2**-26, which float32 rounds to 1 (its
    # eps is 2**-23); the penalty's sums are float64 (the docstring's promise), so wd/2 (1 + 2**-26) exactly
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0 ** -13]))
    step = torch.tensor([2.0 ** -13, 0.0])
    penalty = coupled_l2_penalty(torch.optim.SGD([w], lr=0.1, weight_decay=2.0), [(w, step)])
    assert penalty(0.0) == 1.0 + 2.0 ** -26
    # lr 1: ||theta - u||^2 = (1 - 2**-13)^2 + 2**-26 = 1 - 2**-12 + 2**-25, exact in float64
    assert penalty(1.0) == 1.0 - 2.0 ** -12 + 2.0 ** -25


def test_the_penalty_of_parameters_at_zero_is_the_steps_alone():
    # (mutation pass 18, CL12) theta = 0: ||theta - lr u||^2 = lr^2 ||u||^2, so wd/2 9 lr^2 for u = 3 (the
    # penalty is 0 only where all three of its coefficients are)
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    penalty = coupled_l2_penalty(torch.optim.SGD([w], lr=0.1, weight_decay=2.0), [(w, torch.full((1,), 3.0))])
    assert (penalty(0.0), penalty(1.0), penalty(0.5)) == (0.0, 9.0, 2.25)


class Scalar(torch.nn.Module):
    def __init__(self, x0: float):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor([x0], dtype=torch.float64))

    def forward(self, inputs):
        return self.x + 0 * inputs.sum()


def test_the_delta_stop_is_relative_to_the_loss_not_to_the_loss_plus_decay():
    """``L = 1/2 (x - 10)^2`` at ``x = 9`` under SGD with ``wd = 1``: ``L0 = 1/2`` but ``J0 = L0 + wd/2 x^2 = 41``.
    The step ``u = (x - 10) + wd x = 8`` gives ``J(lr) - J0 = 64 (lr^2 - lr)`` (curvature ``1 + wd = 2``), so
    ``lr* = 1``, and the paper's stop ``J(upper) - J0 <= delta |L0|`` bounds ``upper`` by the root of
    ``64 (lr^2 - lr) = delta L0``. A stop relative to ``J0`` (82x ``L0``) returned 1.03125 for that 1.00078."""
    delta = 0.1
    model = Scalar(9.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1.0)
    res = critical_lr(model, lambda out, _: 0.5 * ((out - 10.0) ** 2).sum(), BATCH, opt, lr_start=1 / 64,
                      delta=delta)
    bound = (1 + (1 + 4 * delta * 0.5 / 64) ** 0.5) / 2    # 64 lr^2 - 64 lr - delta L0 = 0
    assert res.loss0 == 0.5
    assert res.lower <= 1.0 < res.lr <= bound
    assert res.lr == 1 + 2.0 ** -11           # the bisection of [1, 2] that first lands under the bound


def test_the_delta_stop_of_a_negative_loss_is_a_rise_of_delta_times_its_size():
    """Mutation pass 20 (CD3): ``L = 1/2 (x - 10)^2 - 5`` at ``x = 9`` under plain SGD: ``L0 = -4.5``, the step
    ``u = -1`` gives ``L(lr) - L0 = (lr^2 - 2 lr) / 2``, so ``lr* = 2``, and the stop ``L(upper) - L0 <= delta |L0|``
    bounds ``upper`` by the root of ``lr^2 - 2 lr = 2 delta |L0|``, ``1 + sqrt(1 + 0.9)``. (CD3's ``delta L0``,
    negative here, accepted no rise at all.)"""
    delta = 0.1
    model = Scalar(9.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = critical_lr(model, lambda out, _: 0.5 * ((out - 10.0) ** 2).sum() - 5.0, BATCH, opt, lr_start=1 / 64,
                      delta=delta)
    assert res.loss0 == -4.5
    assert res.lower <= 2.0 < res.lr <= 1 + (1 + 2 * delta * 4.5) ** 0.5


class WithUnreached(torch.nn.Module):
    """A linear model beside a parameter the loss never reaches (far from 0: its decay term is large)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 1, bias=False).double()
        self.unreached = torch.nn.Parameter(torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64))
        with torch.no_grad():
            self.body.weight.copy_(torch.tensor([[0.3, -0.2]]))

    def forward(self, inputs):
        return self.body(inputs)


UNREACHED_BATCH = (torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64),
                   torch.tensor([[1.0], [0.5], [-1.0]], dtype=torch.float64))
MSE = torch.nn.MSELoss()
COUPLED = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.1),
           "sgd momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
           "adam": lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.1),
           "radam": lambda ps: torch.optim.RAdam(ps, lr=0.1, weight_decay=0.1)}


def _torch_objective(model, opt, lr: float, zero_filled: bool) -> float:
    """``J = L + sum wd/2 ||theta||^2`` (every parameter) after torch's own step at ``lr``, on copies; the
    unreached parameter's ``.grad`` is None (skipped) or zeros (stepped), as ``zero_filled`` says."""
    import copy

    model, opt = copy.deepcopy((model, opt))
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    MSE(model(UNREACHED_BATCH[0]), UNREACHED_BATCH[1]).backward()
    if zero_filled:
        model.unreached.grad = torch.zeros_like(model.unreached)
    assert model.unreached.grad is None or not model.unreached.grad.any()
    opt.step()
    with torch.no_grad():
        return float(MSE(model(UNREACHED_BATCH[0]), UNREACHED_BATCH[1])) + sum(
            group["weight_decay"] / 2 * float((p ** 2).sum()) for group in opt.param_groups for p in group["params"])


def _torch_critical_lr(model, opt, zero_filled: bool) -> float:
    """``sup {lr : J(torch's step at lr) <= J(0)}`` by doubling from 1e-6 and 60 bisections."""
    j0 = _torch_objective(model, opt, 0.0, zero_filled)
    lower = upper = 1e-6
    while _torch_objective(model, opt, upper, zero_filled) <= j0:
        lower, upper = upper, 2 * upper
    for _ in range(60):
        mid = 0.5 * (lower + upper)
        lower, upper = (mid, upper) if _torch_objective(model, opt, mid, zero_filled) <= j0 else (lower, mid)
    return upper


@pytest.mark.parametrize("name", list(COUPLED))
def test_an_unreached_parameter_decays_in_the_search_as_torchs_step_decays_it(name):
    """A parameter the loss does not reach is skipped by torch's step while its ``.grad`` is None, and stepped
    with a ``.grad`` of zeros (``zero_grad(set_to_none=False)``): its coupled L2 ``wd theta`` moves it and
    ``J`` falls by its decay too. The search's direction left every unreached parameter out (S: 0.6604 for
    torch's 1.4803 under SGD and RAdam, 0.1538 for 0.3467 under Adam); it now follows the rule of the
    pre-conditioned operators (``preconditioner.step_skips``). Truth: the critical lr of torch's own step,
    bisected on copies (``J`` after ``optimizer.step()`` at each lr)."""
    for zero_filled in (False, True):
        model = WithUnreached()
        opt = COUPLED[name](model.parameters())
        if zero_filled:
            model.unreached.grad = torch.zeros_like(model.unreached)
        truth = _torch_critical_lr(model, opt, zero_filled)
        res = critical_lr(model, MSE, UNREACHED_BATCH, opt, lr_start=1e-6, delta=1e-12, rtol=1e-9)
        assert res.lr == pytest.approx(truth, rel=1e-7)
        assert (model.unreached.grad is None) != zero_filled          # (.grad read, not written)
    # the two .grad states differ here by far more than the tolerance: the case tells them apart
    fresh = WithUnreached()
    skipped = _torch_critical_lr(fresh, COUPLED[name](fresh.parameters()), False)
    assert abs(truth / skipped - 1) > 0.5
