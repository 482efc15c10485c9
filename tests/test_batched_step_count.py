"""The batched engines' stacked update (:class:`catapult.sweep.batched_optim.StackedOptimizer`)
counts its updates as its members' torch optimizers hold ``state["step"]``: torch's Adam and
RAdam keep a float32 count, which stops at ``2**24`` (``float32(2**24 + 1) == 2**24``), and their
bias corrections and RAdam's ``r_t`` reuse it; GI-Adam's float64 count goes on.

Truth: torch's own optimizers from the same state (one per member, the float64 equality the
batched engines promise: bit-identical here, every hyper-parameter but the lr a number), and a
NumPy re-derivation of the next step's pre-conditioner at torch's count. Past ``2**24`` the
exact count moved the parameters by ~1e-9 relative at these betas (near 1, where ``b^t`` is not 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.curvature import instability_threshold
from catapult.engine.sharpness_rule import threshold
from catapult.optim import GIAdam, rules
from catapult.sweep.batched_loop import threshold_copy
from catapult.sweep.batched_optim import StackedOptimizer

T = 2 ** 24
NEAR_ONE = (1 - 1e-7, 1 - 1e-7)   # b^t ~ 0.19 at t = 2**24: 1 - b^t still moves with t


def _members(cls, hp, count: int, count_dtype: torch.dtype):
    """Two members (Linear(2, 1), float64) and their stacked optimizer, each at ``count`` updates with
    the same moments; returns (stacked, stacked params by name, [torch optimizer, its params] per member).
    ``hp``: the optimizer's keywords, or a list of them, one a member."""
    torch.manual_seed(0)
    hps = hp if isinstance(hp, list) else [hp, hp]
    models = [torch.nn.Linear(2, 1).double() for _ in range(2)]
    names = [name for name, _ in models[0].named_parameters()]
    stacked = StackedOptimizer({torch.optim.Adam: "adam", torch.optim.RAdam: "radam", GIAdam: "gi-adam"}[cls],
                               [cls(m.parameters(), **h) for m, h in zip(models, hps)], models, names)
    params = {n: torch.stack([dict(m.named_parameters())[n].detach().clone() for m in models]) for n in names}
    gen = torch.Generator().manual_seed(1)
    m0 = [0.1 * torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params.values()]
    v0 = [0.1 * torch.rand(p.shape, dtype=torch.float64, generator=gen) for p in params.values()]
    stacked.state = rules.State(step=count, exp_avg=[m.clone() for m in m0], exp_avg_sq=[v.clone() for v in v0])
    refs = []
    for i, model in enumerate(models):
        own = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        opt = cls(own, **hps[i])
        for k, p in enumerate(own):
            opt.state[p] = {"step": torch.tensor(float(count), dtype=count_dtype),
                            "exp_avg": m0[k][i].clone(), "exp_avg_sq": v0[k][i].clone()}
        refs.append((opt, own))
    return stacked, params, refs, gen


# torch's counts from 2**24 - 2 on: 2**24 - 1, 2**24, 2**24, 2**24 (GI-Adam's float64: on to 2**24 + 2)
CASES = [(torch.optim.Adam, dict(lr=0.1, betas=NEAR_ONE), torch.float32, T),
         (torch.optim.RAdam, dict(lr=0.1, betas=(0.9, 1 - 1e-8)), torch.float32, T),
         (GIAdam, dict(lr=0.1, betas=NEAR_ONE), torch.float64, T + 2)]


def _four_steps_equal_torchs(stacked, params, refs, gen, name):
    """Four steps of the stacked members (lrs 0.1, 0.05) and of torch's own optimizers on the same
    gradients: every member's parameters equal torch's bit for bit after each step."""
    for step in range(4):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params.values()]
        lrs = [0.1, 0.05]
        stacked.step(params, grads, lrs)
        for i, (opt, own) in enumerate(refs):
            opt.param_groups[0]["lr"] = lrs[i]
            for p, g in zip(own, grads):
                p.grad = g[i].clone()
            opt.step()
            for p, key in zip(own, params):
                assert torch.equal(params[key][i], p.detach()), (name, step, i, key)


def test_steps_across_2_24_equal_torchs_own_optimizers_bit_for_bit():
    for cls, hp, count_dtype, last in CASES:
        stacked, params, refs, gen = _members(cls, hp, T - 2, count_dtype)
        _four_steps_equal_torchs(stacked, params, refs, gen, cls.__name__)
        assert {float(s["step"]) for opt, _ in refs for s in opt.state.values()} == {float(last)}
        # the state a member's own optimizer gets (a search runs on it): the count torch holds
        assert (float(stacked.torch_state(1, 0)["step"]), stacked.torch_state(1, 0)["step"].dtype) == (last, count_dtype)
        if cls is torch.optim.RAdam:   # the batched loop's row threshold (a stateless copy at its row) is torch's own
            row = stacked.torch_step(stacked.steps + 1) - 1
            want = instability_threshold(refs[0][0], lr=0.1)
            assert threshold(threshold_copy(refs[0][0]), lr=0.1, step=row) == pytest.approx(want, rel=1e-13, abs=0)


def test_the_next_steps_preconditioner_is_of_torchs_count():
    # P = (1 - b1^t) (sqrt(v' / (1 - b2^t)) + eps) of Adam's next update, at torch's t = 2**24
    b1, b2 = NEAR_ONE
    stacked, params, _, gen = _members(torch.optim.Adam, dict(lr=0.1, betas=NEAR_ONE, eps=1e-8), T + 5, torch.float32)
    grads = [torch.randn((2,) + p.shape[1:], dtype=torch.float64, generator=gen) for p in params.values()]
    d, l2 = stacked.preconditioner([0, 1], params, grads)
    g = torch.cat([x.reshape(2, -1) for x in grads], dim=1).numpy()
    v = torch.cat([x.reshape(2, -1) for x in stacked.state.exp_avg_sq], dim=1).numpy()
    P = (1 - b1 ** T) * (np.sqrt((b2 * v + (1 - b2) * g ** 2) / (1 - b2 ** T)) + 1e-8)
    np.testing.assert_allclose(d.numpy() ** 2, 1 / P, rtol=1e-12, atol=0)   # t = 2**24 + 6: off by ~1e-7
    assert l2 is None


def test_a_member_materialised_past_2_24_holds_torchs_count():
    # torch's float32 count after 2**24 + 3 updates is 2**24; float32(2**24 + 3) rounds to 2**24 + 4
    stacked, params, _, _ = _members(torch.optim.Adam, dict(lr=0.1), T + 3, torch.float32)
    stacked.materialize(0, params)
    member = stacked.optimizers[0]
    assert {(float(s["step"]), s["step"].dtype) for s in member.state.values()} == {(float(T), torch.float32)}


def test_radam_with_decoupled_decay_steps_across_2_24_as_torchs_own():
    """RAdam's ``decoupled_weight_decay=True`` (torch >= 2.1: no guard at the 2.2 floor) decays
    ``theta <- (1 - lr wd) theta`` before its rectified step, whose ``1 - b^t`` and ``r_t`` read the float32
    count stopped at ``2**24``; the members decay apart (``wd`` a column of the stacked update). Truth: torch's
    RAdam from ``state["step"] = 2**24 - 2``, bit for bit, its threshold, and the NumPy pre-conditioner of the
    next step at ``t = 2**24`` from the raw gradient (decoupled: no ``wd theta`` in ``v'``). Found equal
    (no fix); mutants that count exactly past ``2**24`` or read the decay as coupled fail it."""
    b1, b2, eps = 0.9, 1 - 1e-8, 1e-8
    hps = [dict(lr=0.1, betas=(b1, b2), eps=eps, weight_decay=wd, decoupled_weight_decay=True) for wd in (0.01, 0.3)]
    stacked, params, refs, gen = _members(torch.optim.RAdam, hps, T - 2, torch.float32)
    _four_steps_equal_torchs(stacked, params, refs, gen, "RAdam")
    assert {float(s["step"]) for opt, _ in refs for s in opt.state.values()} == {float(T)}
    assert (float(stacked.torch_state(1, 0)["step"]), stacked.torch_state(1, 0)["step"].dtype) == (T, torch.float32)
    row = stacked.torch_step(stacked.steps + 1) - 1
    assert row == T - 1
    for opt, _ in refs:   # the batched loop's row threshold is torch's own, the decoupled shift included
        want = instability_threshold(opt, lr=0.1)
        assert threshold(threshold_copy(opt), lr=0.1, step=row) == pytest.approx(want, rel=1e-13, abs=0)
    grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params.values()]
    d, l2 = stacked.preconditioner([0, 1], params, grads)
    g = torch.cat([x.reshape(2, -1) for x in grads], dim=1).numpy()
    v = torch.cat([x.reshape(2, -1) for x in stacked.state.exp_avg_sq], dim=1).numpy()
    P = (1 - b1 ** T) * (np.sqrt(b2 * v + (1 - b2) * g ** 2) + eps) / np.sqrt(1 - b2 ** T)
    np.testing.assert_allclose(d.numpy() ** 2, 1 / P, rtol=1e-12, atol=0)
    assert l2 is None   # one group a member: its decay is the threshold's shift
