"""GI-Adam's step count past 2**24: a float32 count (torch Adam's layout) stops there, since
float32(2**24 + 1) == 2**24, and every later step's bias correction ``1 - b^t`` reuses
t = 2**24 + 1. The count is exact (float64) and old checkpoints' float32 counts load into it."""
from __future__ import annotations

import numpy as np
import torch

from catapult.optim import GIAdam

B1, B2, LR, EPS = 1 - 1e-7, 1 - 1e-7, 0.1, 1e-8   # b^t ~ 0.19 at t = 2**24: 1 - b^t still moves
T0 = 2 ** 24


def _closed_form(theta, m, v, grads, t0):
    """GI-Adam's update from step ``t0`` on, in float64 NumPy (the moments already initialised)."""
    theta, m, v = (np.array(a, dtype=np.float64) for a in (theta, m, v))
    for t, g in enumerate(grads, start=t0 + 1):
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g ** 2
        theta = theta - LR * (m / (1 - B1 ** t)) / (np.sqrt(v / (1 - B2 ** t)) + EPS)
    return theta


def _checkpoint(step):
    """A saved GI-Adam (or torch Adam) state at step ``T0``, its count as the caller gives it."""
    return {"state": {0: {"step": step, "exp_avg": torch.tensor([0.3, -0.2], dtype=torch.float64),
                          "exp_avg_sq": torch.tensor([0.04, 0.5], dtype=torch.float64)}},
            "param_groups": [{"lr": LR, "betas": (B1, B2), "eps": EPS, "weight_decay": 0.0,
                              "v_bias_correction": True, "v0": "grad", "foreach": None, "maximize": False,
                              "seed": 0, "params": [0]}]}


def test_steps_past_2_24_count_exactly_and_correct_bias_as_the_float64_closed_form():
    grads = [np.array([0.5, -1.5]), np.array([-0.25, 2.0]), np.array([1.0, 0.75])]
    # a float32 count (torch Adam's layout, and this optimizer's before), a float64 one, a number
    for step in (torch.tensor(float(T0), dtype=torch.float32), torch.tensor(float(T0), dtype=torch.float64), T0):
        w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        opt = GIAdam([w], lr=LR, betas=(B1, B2), eps=EPS)
        opt.load_state_dict(_checkpoint(step))
        for k, g in enumerate(grads, start=1):
            w.grad = torch.tensor(g)
            opt.step()
            assert float(opt.state[w]["step"]) == T0 + k   # float32: 2**24 from the first on
        want = _closed_form([1.0, -2.0], [0.3, -0.2], [0.04, 0.5], grads, T0)
        # a count stuck at 2**24 moves theta by ~1e-9 from here (1 - b^t off by ~2e-8)
        np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-13, atol=0)


def test_a_fresh_optimizer_counts_in_float64_and_its_state_dict_round_trips():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = GIAdam([w], lr=LR)
    w.grad = torch.tensor([0.5, -4.0])
    opt.step()
    assert opt.state[w]["step"].dtype == torch.float64 and float(opt.state[w]["step"]) == 1.0
    saved = opt.state_dict()
    twin = GIAdam([torch.nn.Parameter(w.detach().clone())], lr=LR)
    twin.load_state_dict(saved)
    (state,) = twin.state.values()
    assert state["step"].dtype == torch.float64 and float(state["step"]) == 1.0


def test_a_batched_gi_adam_member_materialised_past_2_24_keeps_its_exact_count():
    # the batched engines count in Python ints; a member's own GI-Adam (a search runs on it) was
    # handed a float32 count, 2**24 for 2**24 + 1, which its next step kept
    from catapult.sweep.batched_optim import StackedOptimizer

    torch.manual_seed(0)
    models = [torch.nn.Linear(2, 1).double() for _ in range(2)]
    names = [name for name, _ in models[0].named_parameters()]
    stacked = StackedOptimizer("gi-adam", [GIAdam(m.parameters(), lr=LR, betas=(B1, B2)) for m in models],
                               models, names)
    params = {name: torch.stack([dict(m.named_parameters())[name].detach().clone() for m in models])
              for name in names}
    stacked.step(params, {name: torch.ones_like(p) for name, p in params.items()}, [LR, LR])
    stacked.state.step = T0 + 1
    stacked.materialize(1, params)
    member = stacked.optimizers[1]
    for p in models[1].parameters():
        p.grad = torch.ones_like(p)
    member.step()
    assert {float(s["step"]) for s in member.state.values()} == {T0 + 2.0}
