"""critical_lr's bisection that ends short of its promise says so: a loss that jumps at the critical
lr kept L(upper) far above L0 + delta |L0| after 60 bisections (and 60 forward passes on a bracket of
two adjacent floats), and an rtol below what float64 can halve left the bracket wider than rtol,
both returned silently as if the stop had been met. Truth: closed forms of the losses below."""
import warnings

import pytest
import torch

from catapult import critical_lr

BATCH = (torch.zeros(1), torch.zeros(1))


def _loss(out, target):
    return out


class Jump(torch.nn.Module):
    """L(x) = x^2, plus 10 once x <= 0: from x = 1 GD's step x - lr 2x crosses 0 at lr = 1/2, where L
    jumps from 0 to 10 (L0 = 1): no lr has L0 < L <= 1.1."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, inputs):
        return self.x ** 2 + 10.0 * (self.x <= 0).double() + 0 * inputs.sum()


class Quadratic(torch.nn.Module):
    """L(x) = 2 x^2 from x = 1: L(lr) = 2 (1 - 4 lr)^2, back at L0 = 2 exactly at lr* = 1/2."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, inputs):
        return 2.0 * self.x ** 2 + 0 * inputs.sum()


def test_a_loss_that_jumps_at_the_critical_lr_is_said_and_the_search_stops_on_a_collapsed_bracket():
    model = Jump()
    with pytest.warns(RuntimeWarning, match=r"the loss at upper is 10, above L0 \+ delta \|L0\| = 1\.1"):
        res = critical_lr(model, _loss, BATCH, torch.optim.SGD(model.parameters(), lr=0.1), lr_start=1 / 64)
    # the bracket around the jump at 1/2 shrinks to adjacent floats (53 halvings of [0.25, 0.5]), then stops
    assert res.upper == 0.5 and res.lower == 0.5 - 2.0 ** -54
    assert res.forward_passes < 1 + 6 + 60
    assert model.x.detach().item() == 1.0


def test_an_rtol_float64_cannot_meet_is_said_and_a_met_one_is_not():
    model = Quadratic()
    with pytest.warns(UserWarning, match="below the resolution of float64"), \
            pytest.warns(RuntimeWarning, match=r"relative width 2\.22e-16 is above rtol = 1e-17"):
        res = critical_lr(model, _loss, BATCH, torch.optim.SGD(model.parameters(), lr=0.1), lr_start=1 / 64,
                          rtol=1e-17)
    assert res.lower == 0.5 and res.upper == 0.5 + 2.0 ** -53
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = critical_lr(model, _loss, BATCH, torch.optim.SGD(model.parameters(), lr=0.1), lr_start=1 / 64,
                          rtol=1e-12)
    assert res.lower <= 0.5 <= res.upper and (res.upper - 0.5) / 0.5 <= 1e-12


def test_an_rtol_below_the_parameters_resolution_is_said():
    # S: float32, rtol = 1e-8: trial steps within ~3e-8 of lr* = 1/2 round to the same parameters and
    # loss as lr* (a tie, read as no rise): the bracket [0.5000000267, 0.5000000305] missed lr*, silently
    model = Quadratic().float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"rtol = 1e-08 is below the resolution of float32 parameters \(eps 1\.19e-07\)"):
        res = critical_lr(model, _loss, BATCH, opt, lr_start=1 / 64, rtol=1e-8)
    assert abs(res.upper - 0.5) / 0.5 <= 2 * torch.finfo(torch.float32).eps   # what float32 resolves
    with warnings.catch_warnings():   # rtol = 1e-6 holds in float32: no warning, lr* inside the bracket
        warnings.simplefilter("error")
        res = critical_lr(model, _loss, BATCH, opt, lr_start=1 / 64, rtol=1e-6)
    assert res.lower <= 0.5 <= res.upper and (res.upper - 0.5) / 0.5 <= 1e-6


def test_the_resolution_is_the_coarsest_parameters():
    # (mutation pass 23) a float64 x beside a float32 y that the step moves too: rtol = 1e-8 is below
    # float32's eps (1.19e-07), so it is said naming float32 (the finest dtype, float64, holds it)
    class Mixed(Quadratic):
        def __init__(self):
            super().__init__()
            self.y = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float32))

        def forward(self, inputs):
            return super().forward(inputs) + 2.0 * self.y.double() ** 2

    model = Mixed()
    with pytest.warns(UserWarning, match=r"rtol = 1e-08 is below the resolution of float32 parameters \(eps 1\.19e-07\)"):
        critical_lr(model, _loss, BATCH, torch.optim.SGD(model.parameters(), lr=0.1), lr_start=1 / 64, rtol=1e-8)
