"""GIAdam against an independent NumPy re-derivation of the update rule, plus torch.optim
conventions: foreach == per-tensor, state_dict round trip, closure, schedules.attach."""
from __future__ import annotations

import copy
import inspect
import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from catapult.optim import GIAdam, GIAdamW, initial_second_moment
from catapult.schedules import attach, warmup
from rounding import assert_within_rounding, both_sides

STEPS = 25


def numpy_giadam(theta0, grads, lrs, *, b1, b2, eps, wd, v_bias_correction, a=1.0):
    """GI-Adam written from the paper's equations, in float64 NumPy.

    theta0: initial parameter; grads[t]: gradient at step t+1; lrs[t]: lr of step t+1.
    v_0 = a * g_1^2, m_0 = 0; decoupled weight decay.
    """
    theta = np.array(theta0, dtype=np.float64)
    m = np.zeros_like(theta)
    v = a * grads[0] ** 2
    trajectory = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t) if v_bias_correction else v
        theta = theta * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)
        trajectory.append(theta.copy())
    return trajectory, m, v


def _grad_sequence(shape, seed):
    rng = np.random.default_rng(seed)
    # gradients of varied scale, including a near-zero entry regime, as in real training
    return [rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 1) for _ in range(STEPS)]


@pytest.mark.parametrize("v_bias_correction", [True, False])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_numpy_two_groups_weight_decay_and_schedule(v_bias_correction, foreach):
    rng = np.random.default_rng(0)
    theta_a, theta_b = rng.normal(size=(3, 4)), rng.normal(size=(5,))
    grads_a, grads_b = _grad_sequence((3, 4), 1), _grad_sequence((5,), 2)
    pa = torch.nn.Parameter(torch.tensor(theta_a))
    pb = torch.nn.Parameter(torch.tensor(theta_b))
    opt = GIAdam([{"params": [pa]},
                  {"params": [pb], "lr_mult": 0.5, "betas": (0.8, 0.99), "weight_decay": 0.3}],
                 lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                 v_bias_correction=v_bias_correction, foreach=foreach)
    schedule = warmup(0.05, 5, decay="cosine", total_steps=STEPS)
    sched = attach(opt, schedule)
    got_a, got_b = [], []
    for t in range(STEPS):
        pa.grad = torch.tensor(grads_a[t])
        pb.grad = torch.tensor(grads_b[t])
        opt.step()
        sched.step()
        got_a.append(pa.detach().numpy().copy())
        got_b.append(pb.detach().numpy().copy())

    lrs = [schedule(t) for t in range(STEPS)]
    want_a, m_a, v_a = numpy_giadam(theta_a, grads_a, lrs, b1=0.9, b2=0.999, eps=1e-8, wd=0.1,
                                    v_bias_correction=v_bias_correction)
    want_b, m_b, v_b = numpy_giadam(theta_b, grads_b, [0.5 * lr for lr in lrs], b1=0.8, b2=0.99,
                                    eps=1e-8, wd=0.3, v_bias_correction=v_bias_correction)
    for t in range(STEPS):
        np.testing.assert_allclose(got_a[t], want_a[t], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(got_b[t], want_b[t], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(opt.state[pa]["exp_avg"].numpy(), m_a, rtol=1e-12)
    np.testing.assert_allclose(opt.state[pa]["exp_avg_sq"].numpy(), v_a, rtol=1e-12)
    np.testing.assert_allclose(opt.state[pb]["exp_avg_sq"].numpy(), v_b, rtol=1e-12)
    assert float(opt.state[pb]["step"]) == STEPS


def test_first_step_v_equals_grad_squared_and_size():
    g = torch.tensor([3.0, -0.5, 1e-3], dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = GIAdam([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, v_bias_correction=False)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], g * g, rtol=1e-14, atol=0)
    # m_hat = g, v_hat = g^2: the first step is lr * sign(g)
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(g), rtol=1e-14, atol=0)
    # with v bias correction: an implicit warmup factor sqrt(1 - b2)
    p2 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt2 = GIAdam([p2], lr=0.1, eps=0.0, v_bias_correction=True)
    p2.grad = g.clone()
    opt2.step()
    torch.testing.assert_close(p2.detach(), -0.1 * (1 - 0.999) ** 0.5 * torch.sign(g), rtol=1e-14, atol=0)


def test_scaled_v0_matches_numpy():
    theta = np.linspace(-1, 1, 6)
    grads = _grad_sequence((6,), 3)
    p = torch.nn.Parameter(torch.tensor(theta))
    opt = GIAdam([p], lr=0.01, v0=4.0)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    want, _, _ = numpy_giadam(theta, grads, [0.01] * STEPS, b1=0.9, b2=0.999, eps=1e-8, wd=0.0,
                              v_bias_correction=True, a=4.0)
    np.testing.assert_allclose(p.detach().numpy(), want[-1], rtol=1e-12)


def test_v0_zero_is_exactly_torch_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin.load_state_dict(model.state_dict())
    ours = GIAdam(model.parameters(), lr=3e-3, weight_decay=0.05, v0=0.0, foreach=False)
    ref = torch.optim.AdamW(twin.parameters(), lr=3e-3, weight_decay=0.05, foreach=False)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(10):
        for m, o in ((model, ours), (twin, ref)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    # and the state reads like torch Adam's
    p0, q0 = next(model.parameters()), next(twin.parameters())
    assert set(ours.state[p0]) == set(ref.state[q0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert type(ours.state[p0]["step"]) is type(ref.state[q0]["step"])
    # torch's count is float32, which stops at 2**24; ours float64 (tests/test_gi_adam_step_count.py)
    assert ref.state[q0]["step"].dtype == torch.float32 and ours.state[p0]["step"].dtype == torch.float64
    assert float(ours.state[p0]["step"]) == float(ref.state[q0]["step"]) == 10
    assert torch.equal(ours.state[p0]["exp_avg_sq"], ref.state[q0]["exp_avg_sq"])


def _mixed_model(seed):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(3)),
            torch.nn.Parameter(torch.randn(4, 2, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(5))]   # the last one never gets a gradient


@pytest.mark.parametrize("v0", ["grad", "random", 2.0])
def test_foreach_identical_to_per_tensor(v0):
    runs = []
    for foreach in (False, True):
        params = _mixed_model(0)
        opt = GIAdam([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.01,
                     weight_decay=0.1, v0=v0, foreach=foreach, maximize=(v0 == 2.0))
        gen = torch.Generator().manual_seed(5)
        for _ in range(8):
            for p in params[:3]:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        runs.append((params, opt))
    (p1, o1), (p2, o2) = runs
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
        if a.grad is not None:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(o1.state[a][key], o2.state[b][key])
    assert len(o1.state[p1[3]]) == 0        # no gradient: no state, no update


def test_random_v0_norm_positivity_and_determinism():
    g = torch.randn(10, 10, dtype=torch.float64)
    rng_before = torch.get_rng_state()
    v = initial_second_moment(g, "random", seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)        # global RNG untouched
    assert (v >= 0).all() and (v > 0).float().mean() > 0.99
    # v = r ||g^2|| / ||r||: ||r||, the quotient, the product and ||v|| chain 2n + 6 roundings (n = 100), ||g^2|| fewer
    assert_within_rounding(v.norm(), (g * g).norm(), both_sides(2 * g.numel() + 6, (g * g).norm(), torch.float64))
    assert torch.equal(v, initial_second_moment(g, "random", seed=3))
    assert not torch.equal(v, initial_second_moment(g, "random", seed=4))
    assert not torch.allclose(v, g * g)
    # per-parameter seeds: seed + position of the parameter across groups
    params = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))]
    opt = GIAdam([{"params": [params[0]]}, {"params": [params[1]]}], v0="random", seed=10)
    grads = [torch.ones(4), torch.ones(4)]
    for p, gr in zip(params, grads):
        p.grad = gr
    expected = [initial_second_moment(gr, "random", 10 + i) for i, gr in enumerate(grads)]
    predicted = [opt.initial_exp_avg_sq(p, gr) for p, gr in zip(params, grads)]
    opt.step()
    b2 = 0.999
    for p, gr, v0, pred in zip(params, grads, expected, predicted):
        assert torch.equal(pred, v0)
        # b2 v0 + (1 - b2) g^2: the two products, the square, the sum and 1 - b2 cast to float32
        assert_within_rounding(opt.state[p]["exp_avg_sq"], b2 * v0 + (1 - b2) * gr * gr,
                               both_sides(5, b2 * v0.abs() + (1 - b2) * gr * gr, torch.float32))


def test_state_dict_round_trip_continues_identically():
    def make(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        opt = GIAdam([{"params": model[0].parameters()},
                      {"params": model[2].parameters(), "lr_mult": 0.1, "v0": 3.0}],
                     lr=0.01, weight_decay=0.01, v_bias_correction=False)
        return model, opt

    x, y = torch.randn(20, 3), torch.randn(20, 1)

    def train(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    model, opt = make(0)
    train(model, opt, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2 = make(1)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[1]["v0"] == 3.0 and opt2.param_groups[0]["v_bias_correction"] is False
    train(model, opt, 5)
    train(model2, opt2, 5)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_closure_is_called_and_its_loss_returned():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = GIAdam([p], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1]
    assert loss.item() == pytest.approx(5.0)
    # the gradient the closure computed was used: m_hat/sqrt(v_hat) = sign(g) scaled by the
    # implicit warmup sqrt(1 - b2)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]) - 0.1 * (1 - 0.999) ** 0.5
                               * torch.tensor([1.0, -1.0]), rtol=1e-5, atol=1e-6)


def test_alias_and_bad_arguments():
    assert GIAdamW is GIAdam
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="v0"):
        GIAdam(p, v0="zeros")
    with pytest.raises(ValueError, match="v0"):
        GIAdam(p, v0=-1.0)
    with pytest.raises(ValueError, match="v0"):
        GIAdam([{"params": p, "v0": "nope"}])
    with pytest.raises(ValueError, match="betas"):
        GIAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        GIAdam(p, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        GIAdam(p, weight_decay=-0.1)


def test_bad_options_are_refused_in_param_groups_and_flags_too():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    # a string flag is truthy: "no" used to mean v_bias_correction=True, "false" maximize=True
    with pytest.raises(TypeError, match="v_bias_correction"):
        GIAdam([p], v_bias_correction="no")
    with pytest.raises(TypeError, match="maximize"):
        GIAdam([p], maximize="false")
    with pytest.raises(TypeError, match="foreach"):
        GIAdam([p], foreach="yes")
    with pytest.raises(ValueError, match="betas"):
        GIAdam([p], betas=None)
    with pytest.raises(ValueError, match="eps"):
        GIAdam([p], eps=float("inf"))
    # a group's own options get the constructor's checks (b2 = 1 divided by 1 - b2^t = 0)
    with pytest.raises(ValueError, match="param group 1: Invalid betas"):
        GIAdam([{"params": [p]}, {"params": [q], "betas": (0.9, 1.0)}])
    with pytest.raises(TypeError, match="param group 0: v_bias_correction"):
        GIAdam([{"params": [p], "v_bias_correction": "false"}])
    opt = GIAdam([p], lr=0.1)
    for bad, match in (({"lr": -0.1}, "lr"), ({"lr": float("nan")}, "lr"),
                       ({"weight_decay": -1.0}, "weight_decay"), ({"eps": "1e-8"}, "eps"),
                       ({"seed": 1.5}, "seed"), ({"v0": "zeros"}, "v0"),
                       ({"maximize": "yes"}, "maximize")):
        with pytest.raises((TypeError, ValueError), match=f"param group 1: .*{match}"):
            opt.add_param_group({"params": [q], **bad})
    assert len(opt.param_groups) == 1
    # good group options are kept (a tensor lr stays the tensor a scheduler fills in place)
    lr = torch.tensor(0.5)
    opt.add_param_group({"params": [q], "lr": lr, "betas": [0.8, 0.99], "v_bias_correction": 0})
    group = opt.param_groups[1]
    assert group["lr"] is lr and group["betas"] == (0.8, 0.99)
    assert group["v_bias_correction"] is False


@pytest.mark.parametrize("unsupported", ["sparse", "complex"])
def test_a_refused_step_leaves_no_state_behind(unsupported):
    from catapult.critical_lr import next_step_direction

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    if unsupported == "sparse":
        emb = torch.nn.Embedding(3, 2, sparse=True)
        other = emb.weight
        emb(torch.tensor([1])).sum().backward()
    else:
        other = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
        other.grad = torch.ones(2, dtype=torch.complex64)
    opt = GIAdam([w, other], lr=0.1)
    w.grad = torch.tensor([0.5, -4.0])
    with pytest.raises(RuntimeError, match=unsupported):
        opt.step()
    assert opt.state_dict()["state"] == {}
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    # still a fresh optimizer: the next step (and its prediction) is GI-Adam's first,
    # lr sqrt(1 - b2) sign(g) (v_1 = g^2, bias-corrected)
    other.grad = None
    first = 0.1 * (1 - 0.999) ** 0.5 * torch.tensor([-1.0, 1.0])
    ((_, u),) = next_step_direction(opt, {w: w.grad})
    # m / (1 - b1), v / (1 - b2), sqrt, + eps, the quotient, the lr and first's cast: under 12 roundings
    # a side (eps = 1e-8 beside sqrt(v_hat) = 15.8 moves it by 6e-10 relative, below one rounding)
    assert_within_rounding(-0.1 * u, first, both_sides(12, first.abs(), torch.float32))
    opt.step()
    assert_within_rounding(w.detach(), torch.tensor([1.0, -2.0]) + first,
                           both_sides(13, torch.tensor([1.0, 2.0]) + first.abs(), torch.float32))


_FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 4), steps=st.integers(1, 6), data=st.data(), lr=st.floats(0, 2),
       b1=st.floats(0, 0.999), b2=st.floats(0, 0.9999), eps=st.floats(1e-12, 1),
       wd=st.floats(0, 1), v_bias_correction=st.booleans(),
       a=st.one_of(st.just("grad"), st.floats(0, 10)), maximize=st.booleans())
def test_matches_numpy_under_fuzzed_hyperparameters(n, steps, data, lr, b1, b2, eps, wd,
                                                     v_bias_correction, a, maximize):
    """Edges the fixed cases miss: b1 or b2 = 0, a = 0 (Adam), eps ~ |g|, lr * wd ~ 1,
    gradients spanning six orders of magnitude, maximize (numpy_giadam descends -g)."""
    theta0 = np.array(data.draw(st.lists(_FINITE, min_size=n, max_size=n)))
    grads = [np.array(data.draw(st.lists(_FINITE, min_size=n, max_size=n))) for _ in range(steps)]
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = GIAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                 v_bias_correction=v_bias_correction, v0=a, maximize=maximize)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    sign = -1.0 if maximize else 1.0
    want, m, v = numpy_giadam(theta0, [sign * g for g in grads], [lr] * steps, b1=b1, b2=b2,
                              eps=eps, wd=wd, v_bias_correction=v_bias_correction,
                              a=1.0 if a == "grad" else a)
    np.testing.assert_allclose(p.detach().numpy(), want[-1], rtol=1e-9,
                               atol=1e-9 * (1 + np.abs(want[-1]).max()))
    # m: torch's lerp (torch Adam's too) takes 1 - b1 as 1 once b1 < 2**-53 and drops b1 m, which NumPy's
    # b1 m + (1 - b1) g keeps (b1 = 1.5e-285, g_2 = 0: m_2 0 for 1.5e-285); per step a few roundings of the
    # entry's largest |g| (|m| <= max |g|) apart, so 4 per step absolutely, beside the relative 1e-9
    lerp_rounding = 4 * steps * np.finfo(np.float64).eps * np.abs(np.array(grads)).max(axis=0)
    for i, bound in enumerate(lerp_rounding):
        np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy()[i], m[i], rtol=1e-9, atol=bound)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), v, rtol=1e-9, atol=0)


def test_torch_adam_flags_at_their_off_values_switch_over_unchanged():
    # code written for torch Adam passes these; at their off values GIAdam(v0=0) is still
    # exactly AdamW, and turning one on is refused by name
    flags = dict(amsgrad=False, capturable=False, differentiable=False, fused=None, foreach=False,
                 weight_decay=0.01)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    twin = torch.nn.Parameter(w.detach().clone())
    ours = GIAdam([w], lr=1e-2, v0=0.0, **flags)
    ref = torch.optim.AdamW([twin], lr=1e-2, **flags)
    for step in range(3):
        for p, o in ((w, ours), (twin, ref)):
            p.grad = torch.arange(5.0) - step
            o.step()
    assert torch.equal(w, twin)
    for name, value in (("amsgrad", True), ("capturable", True), ("differentiable", True),
                        ("fused", True), ("fused", "no")):
        with pytest.raises(ValueError, match=rf"GIAdam does not support {name}={value!r}"):
            GIAdam([w], **{name: value})


def test_load_state_dict_checks_the_groups_options_and_a_refused_one_changes_nothing():
    w = torch.nn.Parameter(torch.ones(3))
    opt = GIAdam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    before = copy.deepcopy(opt.state_dict())
    for key, bad, message in (("betas", (0.9, 1.0), "betas"), ("lr", -1.0, "lr"),
                              ("v0", "nope", "v0"), ("maximize", "false", "maximize")):
        edited = copy.deepcopy(saved)
        edited["param_groups"][0][key] = bad
        with pytest.raises((ValueError, TypeError), match=rf"state_dict param group 0: .*{message}"):
            opt.load_state_dict(edited)
        assert str(opt.state_dict()) == str(before)
    fresh = GIAdam([torch.nn.Parameter(torch.ones(3))], lr=0.5)
    fresh.load_state_dict(saved)  # the optimizer's own state_dict loads
    assert fresh.param_groups[0]["lr"] == 0.1


def test_torch_adam_flags_and_coupled_l2_are_refused_in_groups_and_loaded_states_too():
    # a torch.optim.Adam(amsgrad=True, weight_decay=0.5) state_dict loaded, and GIAdam stepped
    # without the running maximum and with 0.5 as a decoupled decay (lr * 0.5 per step instead
    # of Adam's L2 gradient 0.5 * theta): two other optimizers, silently
    w = torch.nn.Parameter(torch.ones(3))
    for options, message in ((dict(amsgrad=True), "amsgrad=True"),
                             (dict(weight_decay=0.5), "decoupled_weight_decay(=False| \\()"),  # torch 2.2: no flag
                             (dict(capturable=False, differentiable=False), None)):
        adam = torch.optim.Adam([w], lr=0.1, **options)
        w.grad = torch.ones(3)
        adam.step()
        ours = GIAdam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
        before = str(ours.state_dict())
        if message is None:     # the flags off and no weight decay: Adam's state loads
            ours.load_state_dict(adam.state_dict())
            assert torch.equal(next(iter(ours.state.values()))["exp_avg_sq"], torch.full((3,), 0.001))
            continue
        with pytest.raises(ValueError, match=rf"state_dict param group 0: .*{message}"):
            ours.load_state_dict(adam.state_dict())
        assert str(ours.state_dict()) == before
    if "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters:   # not torch 2.2's
        adamw_like = torch.optim.Adam([w], lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)
        GIAdam([torch.nn.Parameter(torch.ones(3))]).load_state_dict(adamw_like.state_dict())
    for group, message in (({"amsgrad": True}, "param group 1: GIAdam does not support amsgrad=True"),
                           ({"fused": True}, "param group 1: GIAdam does not support fused=True"),
                           ({"decoupled_weight_decay": False, "weight_decay": 0.1},
                            "param group 1: decoupled_weight_decay=False")):
        with pytest.raises(ValueError, match=message):
            GIAdam([{"params": [torch.nn.Parameter(torch.ones(1))]},
                    {"params": [torch.nn.Parameter(torch.ones(1))], **group}])
    with pytest.raises(ValueError, match="param group 0: decoupled_weight_decay=False"):
        GIAdam([{"params": [w], "decoupled_weight_decay": False}], weight_decay=0.1)


def test_gi_adam_updates_a_parameter_listed_twice_twice_as_torch_adamw_does():
    # S: both entries were updated from the one old state (one update of the moments) and the count
    # went up by 2: from w = 1 one step() gave 0.8990 (GIAdam(v0=0)) with step 2 where torch AdamW's two
    # updates give 0.7981. torch warns of such a group and steps each entry in turn. Truth: torch AdamW,
    # which GIAdam(v0=0) is bit for bit
    gen = torch.Generator().manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # "duplicate parameters": torch's own word
        gi = GIAdam([ours, ours], lr=0.1, weight_decay=0.01, v0=0.0)
        adamw = torch.optim.AdamW([theirs, theirs], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(3, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        gi.step()
        adamw.step()
    assert torch.equal(ours, theirs)
    assert float(gi.state[ours]["step"]) == float(adamw.state[theirs]["step"]) == 6.0
