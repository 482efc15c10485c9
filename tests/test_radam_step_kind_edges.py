"""optim.thresholds.radam_step_kind reads the first param group's beta2 (mutation pass 15): torch
RAdam's step t is rectified once rho_t = rho_inf - 2 t b2^t / (1 - b2^t) > 5, rho_inf =
2 / (1 - b2) - 1 (computed here), so b2 = 0.999 rectifies step 6 and b2 = 0.5 (rho_inf = 3) never;
beta1 plays no part."""
from __future__ import annotations

import pytest
import torch

from catapult.optim.thresholds import group_decays, radam_reference_step, radam_step_kind, unpreconditioned_kind


def _rho(t, b2):
    return 2 / (1 - b2) - 1 - 2 * t * b2 ** t / (1 - b2 ** t)


def test_the_first_groups_beta2_decides():
    assert _rho(5, 0.999) < 5 < _rho(6, 0.999) and 2 / (1 - 0.5) - 1 == 3
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.RAdam([{"params": [a], "betas": (0.5, 0.999)}, {"params": [b], "betas": (0.9, 0.5)}])
    assert [radam_step_kind(opt, t) for t in (5, 6, 50)] == ["hessian", "preconditioned", "preconditioned"]
    other = torch.optim.RAdam([{"params": [b], "betas": (0.9, 0.5)}, {"params": [a], "betas": (0.5, 0.999)}])
    assert [radam_step_kind(other, t) for t in (6, 50)] == ["hessian", "hessian"]


def test_no_trainable_parameters_is_the_plain_hessian_kind():
    # (mutation pass 18, TH2) nothing is moved at another lr and nothing decays apart: the plain
    # Hessian's kind; the measurement itself then names the empty parameter list
    a = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5}], lr=0.1)
    assert unpreconditioned_kind(opt, []) == "hessian" and unpreconditioned_kind(opt, iter([])) == "hessian"
    assert radam_step_kind(torch.optim.RAdam([a], lr=0.1), 1, []) == "hessian"


def test_one_decay_coupled_in_one_group_and_decoupled_in_the_other_is_two_decays():
    # (mutation pass 18, TH8) RAdam's coupled decay adds wd theta to the gradient (through the EMA:
    # SGD's threshold shift (1 + b1) / (1 - b1) wd), the decoupled one multiplies theta by 1 - lr wd
    # (a shift of wd): the same number is two decays, and no single shift of the first group holds both
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.RAdam([{"params": [a]}, {"params": [b], "decoupled_weight_decay": True}], lr=0.1,
                            weight_decay=0.1)
    assert group_decays(opt) == {(0.1, False), (0.1, True)}
    assert unpreconditioned_kind(opt, [a, b]) == "lr_scaled"
    assert radam_step_kind(opt, 1, [a, b]) == "lr_scaled"
    same = torch.optim.RAdam([{"params": [a]}, {"params": [b]}], lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
    assert group_decays(same) == {(0.1, True)} and unpreconditioned_kind(same, [a, b]) == "hessian"


def test_groups_the_step_does_not_move_add_no_decay():
    # (mutation pass 18, TH9-TH11) a group at lr 0 (frozen) or without parameters decays nothing,
    # whatever its weight_decay says: one decay, and over the moving parameters the plain Hessian
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.0, "weight_decay": 0.5},
                           {"params": [], "weight_decay": 0.25}], lr=0.1, weight_decay=0.1)
    assert group_decays(opt) == {(0.1, False)}
    assert unpreconditioned_kind(opt, [a]) == "hessian"
    assert unpreconditioned_kind(opt, [a, b]) == "lr_scaled"   # b is not moved: M holds its 0


def test_the_reference_step_is_the_largest_count_plus_one_at_the_first_groups_beta2():
    # (mutation pass 18, TH15, TH17, TH18) torch RAdam counts steps per parameter; the threshold's step is
    # the largest count + 1 (a parameter without a gradient is not stepped), beta2 the first group's
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.RAdam([{"params": [a], "betas": (0.9, 0.99)}, {"params": [b], "betas": (0.9, 0.5)}])
    assert radam_reference_step(opt) == (1, 0.99)       # nothing stepped yet: the first step
    a.grad = torch.ones(1)
    opt.step()                                          # a: 1 step (first in the state), b: none
    a.grad, b.grad = None, torch.ones(1)
    opt.step(), opt.step(), opt.step()                  # b: 3 steps
    assert [int(float(opt.state[p]["step"])) for p in (a, b)] == [1, 3]
    assert radam_reference_step(opt) == (4, 0.99)


def test_a_parameter_with_no_state_yet_takes_its_first_step():
    """Mutation pass 20 (TH14): a parameter RAdam has not stepped yet (no state: added after the others' steps,
    or no gradient so far) takes step 1 next, un-rectified: beside one at its 3rd step (un-rectified too) the
    scales are [] (one EMA-momentum SGD threshold); beside one at its 9th (rectified) the step is refused naming
    parameter 1 'its own step 1'. (TH14 counted it at 0: radam_rho(0) divides by 1 - b2^0 = 0.)"""
    from catapult.optim.thresholds import radam_step_scales

    for steps, rectified in ((2, False), (8, True)):
        a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        opt = torch.optim.RAdam([a, b])
        for _ in range(steps):
            a.grad = torch.ones(1)
            opt.step()
        assert b not in opt.state or "step" not in opt.state[b]
        if not rectified:
            assert radam_step_scales(opt, [a, b]) == []
        else:
            with pytest.raises(ValueError, match=r"un-rectified for parameter 1 \(its own step 1\) and rectified "
                                                 r"at step 9"):
                radam_step_scales(opt, [a, b])
