"""catapult.optim.rules at the edges its formulas define (mutation pass 23): the steps below are
worked by hand in binary-exact numbers, so each compare is exact."""
from __future__ import annotations

import pytest
import torch

from catapult.optim import rules


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_a_negative_weight_decay_enters_sgds_step_as_the_formula_says():
    # d = g + wd theta for any number wd != 0 (the rules check nothing: torch.optim refuses wd < 0,
    # the formula does not): theta = (2, -4), g = (1, 1), wd = -0.25: d = (0.5, 2), lr 0.5 -> (1.75, -5)
    theta, g = [_t(2.0, -4.0)], [_t(1.0, 1.0)]
    new, _ = rules.update("sgd", theta, g, rules.init("sgd", theta, {}), {"lr": 0.5, "weight_decay": -0.25})
    assert torch.equal(new[0], _t(1.75, -5.0))


def test_sgds_l2_coefficient_is_its_weight_decay_even_where_decoupled_weight_decay_is_set():
    # SGD has no decoupled weight decay: update folds wd theta into g whatever the flag says, and
    # l2_coefficient must name the same wd (the step below: (theta - new) / lr - g = wd theta)
    hp = {"lr": 0.5, "weight_decay": 0.25, "decoupled_weight_decay": True}
    theta, g = [_t(2.0, -4.0)], [_t(1.0, 1.0)]
    new, _ = rules.update("sgd", theta, g, rules.init("sgd", theta, hp), hp)
    assert torch.equal((theta[0] - new[0]) / 0.5 - g[0], 0.25 * theta[0])
    assert rules.l2_coefficient("sgd", hp) == 0.25
    assert rules.l2_coefficient("adam", hp) == 0.0   # Adam with the flag is decoupled: no L2 in the gradient


def test_a_bool_v0_is_refused_not_read_as_the_number_one():
    # True is a numbers.Real: as a number it was v0 = 1.0 (v_0 = g^2, the "grad" rule) without a word
    for v0 in (True, False):
        with pytest.raises(TypeError, match="v0 must be one of"):
            rules.check_v0(v0)
        with pytest.raises(TypeError, match="v0 must be one of"):
            rules.initial_second_moment(_t(1.0, -2.0), v0)


def test_the_random_v0_seed_range_is_torchs_half_open_one():
    # torch.Generator.manual_seed takes [-2**63, 2**64): 2**64 - 1 draws, 2**64 is refused by name
    g = _t(1.0, -2.0)
    v0 = rules.initial_second_moment(g, "random", seed=2 ** 64 - 1)
    assert float(v0.norm()) == pytest.approx(float((g * g).norm()), rel=1e-12)
    with pytest.raises(ValueError, match=r"seed 18446744073709551616 is beyond"):
        rules.initial_second_moment(g, "random", seed=2 ** 64)


def test_init_makes_the_amsgrad_maximum_for_adamw_as_for_adam():
    # "Adam / AdamW / RAdam: m = v = 0 (and v_max = 0 with amsgrad)" (init's docstring)
    theta = [_t(2.0, -4.0)]
    for rule in ("adam", "adamw"):
        state = rules.init(rule, theta, {"amsgrad": True})
        assert state.max_exp_avg_sq is not None and torch.equal(state.max_exp_avg_sq[0], _t(0.0, 0.0)), rule
    assert rules.init("radam", theta, {"amsgrad": True}).max_exp_avg_sq is None   # RAdam has no amsgrad


def test_update_keeps_inits_state_layout_without_amsgrad():
    # no amsgrad: init makes no max_exp_avg_sq, and a step makes none either (not a list of Nones)
    theta, g = [_t(2.0, -4.0)], [_t(1.0, 1.0)]
    state = rules.init("adam", theta, {})
    assert state.max_exp_avg_sq is None
    _, state = rules.update("adam", theta, g, state, {"lr": 0.5})
    assert state.max_exp_avg_sq is None and state.step == 1


def test_radams_preconditioner_adds_eps_before_the_v_correction():
    # P = (1 - b1^(t+1)) (sqrt(v') + eps) / sqrt(1 - b2^(t+1)), RAdam's step (the docstring): with
    # b1 = 1/2, b2 = 3/4, t = 9 (rho_inf = 7, rho_10 = 5.8: rectified), v = 4, g = 2: v' = 4, sqrt(v') = 2
    import math

    hp = {"betas": (0.5, 0.75), "eps": 0.5}
    state = rules.State(step=9, exp_avg=[_t(0.0)], exp_avg_sq=[_t(4.0)])
    P = rules.preconditioner("radam", [_t(2.0)], state, hp)
    c1, c2 = 1 - 0.5 ** 10, 1 - 0.75 ** 10
    assert P is not None
    assert float(P[0]) == pytest.approx(c1 * (2.0 + 0.5) / math.sqrt(c2), rel=1e-15)


def test_radams_preconditioner_refuses_members_that_disagree_on_rectification():
    # per-member beta2 (N = 2 members stacked along dim 0): at step 10, b2 = 3/4 is rectified
    # (rho_10 = 5.8 > 5), b2 = 1/2 never is (rho_inf = 3): one preconditioner cannot say both
    b2 = _t(0.75, 0.5).view(2, 1)
    state = rules.State(step=9, exp_avg=[torch.zeros(2, 3, dtype=torch.float64)],
                        exp_avg_sq=[torch.ones(2, 3, dtype=torch.float64)])
    grads = [torch.ones(2, 3, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"RAdam's step 10 is rectified for some members only"):
        rules.preconditioner("radam", grads, state, {"beta1": 0.5, "beta2": b2})
    assert rules.preconditioner("radam", grads, state, {"beta1": 0.5, "beta2": _t(0.5, 0.5).view(2, 1)}) is None


def test_gi_adams_random_v0_draws_from_seed_0_by_default():
    # "GI-Adam: ... seed=0" (the module's keys and defaults): hp without a seed is seed 0's v_0
    theta, g = [_t(2.0, -4.0, 1.0)], [_t(1.0, -2.0, 0.5)]
    hp = {"lr": 0.1, "v0": "random"}
    _, state = rules.update("gi-adam", theta, g, rules.init("gi-adam", theta, hp), hp)
    v0 = rules.initial_second_moment(g[0], "random", seed=0)
    assert torch.equal(state.exp_avg_sq[0], v0.mul(0.999).addcmul(g[0], g[0], value=1 - 0.999))
    assert not torch.equal(v0, rules.initial_second_moment(g[0], "random", seed=1))


@pytest.mark.parametrize("steps_before", [0, 3])
def test_the_preconditioner_of_a_maximize_step_with_coupled_l2_is_torch_adams(steps_before):
    # S: torch negates g before adding wd theta, and P took v' from (g + wd theta)^2: at theta = (1, -2),
    # g = (0.5, 0.25), wd = 0.25 the first P was (1 - b1) (0.75, 0.25) for torch's (1 - b1) (0.25, 0.75).
    # Truth: torch.optim.Adam's own next step, theta - theta' = lr m' / P (eps = 0)
    theta = torch.nn.Parameter(_t(1.0, -2.0))
    opt = torch.optim.Adam([theta], lr=0.125, weight_decay=0.25, maximize=True, eps=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps_before):
        theta.grad = torch.randn(2, generator=gen, dtype=torch.float64)
        opt.step()
    g = _t(0.5, 0.25)
    state = opt.state[theta]
    before = None if not state else rules.State(step=int(state["step"]), exp_avg=[state["exp_avg"].clone()],
                                                exp_avg_sq=[state["exp_avg_sq"].clone()])
    (P,) = rules.preconditioner("adam", [g], before, opt.param_groups[0], params=[theta.detach().clone()])
    old = theta.detach().clone()
    theta.grad = g.clone()
    opt.step()
    truth = 0.125 * opt.state[theta]["exp_avg"] / (old - theta.detach())
    torch.testing.assert_close(P, truth, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("rule", ["adam", "adamw", "radam", "gi-adam"])
def test_a_complex_parameter_is_refused_by_the_adam_rules_and_its_real_view_is_torchs_step(rule):
    # S: v' = b2 v + (1 - b2) g^2 took the complex square, where torch.optim steps the real and imaginary
    # parts apart: from theta = 0 at g = (1 + 1j, -2 + 0.5j) Adam's first step came out (-0.1 - 5e-10j,
    # 0.1 - 1.2e-10j) for torch's (-0.1 - 0.1j, 0.1 - 0.1j). Truth: torch.optim on the complex parameter
    theta, g = [torch.zeros(2, dtype=torch.complex128)], [torch.tensor([1 + 1j, -2 + 0.5j], dtype=torch.complex128)]
    hp = {"lr": 0.1, "v0": 0.0}
    for call in (lambda: rules.update(rule, theta, g, rules.init(rule, theta, hp), hp),
                 lambda: rules.direction(rule, theta, g, None, hp),
                 lambda: rules.preconditioner(rule, g, None, hp)):
        with pytest.raises(ValueError, match=f"the {rule} rule takes real tensors"):
            call()
    real, real_g = [torch.view_as_real(theta[0])], [torch.view_as_real(g[0])]
    new, _ = rules.update(rule, real, real_g, rules.init(rule, real, hp), hp)
    w = torch.nn.Parameter(theta[0].clone())
    w.grad = g[0].clone()
    torch.optim.AdamW([w], lr=0.1, weight_decay=0.0).step()   # the first step: RAdam's is m_hat, GI-Adam's with v0=0 Adam's
    expected = torch.view_as_real(w.detach()) if rule != "radam" else -0.1 * real_g[0]
    assert torch.equal(new[0], expected)


@pytest.mark.parametrize("rule, flag", [("adam", "maximize"), ("adam", "amsgrad"), ("sgd", "nesterov"),
                                        ("adam", "decoupled_weight_decay")])
def test_a_per_member_tensor_of_a_formula_flag_is_refused_naming_it(rule, flag):
    # the rules take per-member tensors of numbers (module docstring); a per-member tensor of a flag that
    # picks the formula failed in torch's words, "Boolean value of Tensor with more than one value is ambiguous"
    theta, g = [torch.ones(2, 3, dtype=torch.float64)], [torch.ones(2, 3, dtype=torch.float64)]
    hp = {"lr": 0.5, "momentum": 0.5, "weight_decay": 0.25, flag: torch.tensor([True, False]).view(2, 1)}
    with pytest.raises(ValueError, match=rf"rules: {flag} takes one value for all members .*got 2 values"):
        rules.update(rule, theta, g, rules.init(rule, theta, {"lr": 0.5}), hp)
    with pytest.raises(ValueError, match=rf"rules: {flag} takes one value"):
        rules.direction(rule, theta, g, rules.init(rule, theta, {"lr": 0.5}), hp)
    # one value in a tensor is that value: the step of the Python bool, bit for bit
    one = dict(hp, **{flag: torch.tensor([True])})
    assert torch.equal(rules.update(rule, theta, g, rules.init(rule, theta, one), one)[0][0],
                       rules.update(rule, theta, g, rules.init(rule, theta, one), dict(hp, **{flag: True}))[0][0])


def test_sgds_threshold_refuses_a_per_member_nesterov_naming_it():
    with pytest.raises(ValueError, match=r"threshold: nesterov takes one value"):
        rules.threshold("sgd", {"lr": 0.5, "momentum": 0.5, "nesterov": torch.tensor([True, False])})
    # (2 + 2b) / ((1 + 2b) lr) at b = 1/2, lr = 1/2: 3 / 1
    assert rules.threshold("sgd", {"lr": 0.5, "momentum": 0.5, "nesterov": torch.tensor(True)}) == 3.0
