"""The batched engines' optimizer update (:class:`catapult.sweep.batched_optim.StackedOptimizer`,
which the hand-derived kernels apply member span by member span, fused into their gradient pass)
equals each member's own torch optimizer in float64, and goes through :mod:`catapult.optim.rules`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.optim import GIAdam
from catapult.sweep.batched_optim import StackedOptimizer

# per optimizer: the torch class and each member's hyper-parameters (they differ between members)
CASES = {
    "sgd": (torch.optim.SGD, [dict(lr=0.1, momentum=0.9, weight_decay=1e-2), dict(lr=0.3, momentum=0.5),
                              dict(lr=0.05, momentum=0.0, weight_decay=1e-3)]),
    "sgd-nesterov": (torch.optim.SGD, [dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
                                       dict(lr=0.2, momentum=0.7, nesterov=True)]),
    "sgd-dampening": (torch.optim.SGD, [dict(lr=0.1, momentum=0.9, dampening=0.3), dict(lr=0.2, momentum=0.6,
                                                                                       dampening=0.3)]),
    "adam": (torch.optim.Adam, [dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2),
                                dict(lr=3e-2, betas=(0.8, 0.999), eps=1e-6), dict(lr=1e-3)]),
    "adam-amsgrad": (torch.optim.Adam, [dict(lr=1e-2, amsgrad=True), dict(lr=3e-2, amsgrad=True)]),
    "adamw": (torch.optim.AdamW, [dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-2, betas=(0.85, 0.98),
                                                                       weight_decay=0.0)]),
    "radam": (torch.optim.RAdam, [dict(lr=1e-2), dict(lr=3e-2, betas=(0.8, 0.99), weight_decay=1e-2)]),
    "gi-adam": (GIAdam, [dict(lr=1e-2, v0=2.0), dict(lr=3e-2, v0=2.0, weight_decay=0.1)]),
}


def _models(n: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
            for _ in range(n)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_update_in_member_spans_equals_torch_optim_float64(case):
    cls, hps = CASES[case]
    n = len(hps)
    models = _models(n)
    names = [name for name, _ in models[0].named_parameters()]
    optimizers = [cls(m.parameters(), **hp) for m, hp in zip(models, hps)]
    stacked = StackedOptimizer(case.split("-")[0] if case != "gi-adam" else "gi-adam", optimizers, models, names)
    params = [torch.stack([dict(m.named_parameters())[name].detach().clone() for m in models]) for name in names]
    refs = [[p.detach().clone().requires_grad_(True) for p in m.parameters()] for m in models]
    ref_opts = [cls(r, **hp) for r, hp in zip(refs, hps)]
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
        # the loop's lr_t of each member (a schedule: changes every step); parameters move at
        # lr_t * lr_mult of their group (1 here), whatever lr the member's optimizer was built with
        lrs = [hp["lr"] * (1.0 + 0.5 * step) for hp in hps]
        hp = stacked.begin_step(params, lrs)
        spans = [(1, n), (0, 1)]  # out of order, as any member ranges of one step may come
        for s, e in spans:
            stacked.apply(hp, params, [g[s:e] for g in grads], s, e)
        stacked.end_step()
        for i, (ref, opt) in enumerate(zip(refs, ref_opts)):
            for group in opt.param_groups:
                group["lr"] = lrs[i]
            for p, g in zip(ref, grads):
                p.grad = g[i].clone()
            opt.step()
            for k, p in enumerate(ref):
                assert torch.allclose(params[k][i], p.detach(), rtol=1e-12, atol=1e-14), (step, i, k)


def test_kernel_engine_updates_through_the_rules(monkeypatch):
    """The hand-derived engine's update (fused and separate) is ``rules.update``: with the rule
    replaced by one that moves nothing, the members' losses never change."""
    from catapult import config as cfg
    from catapult.optim import rules
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.executors import Cell

    calls = []
    original = rules.update

    def frozen(rule, params, grads, state, hp):
        calls.append(rule)
        _, new_state = original(rule, params, grads, state, hp)
        return [p.clone() for p in params], new_state

    monkeypatch.setattr(rules, "update", frozen)
    cells = [Cell(i, cfg.validate({"name": f"c{i}", "seed": i, "data": {"name": "digits", "n_train": 64, "n_test": 32},
                                   "model": {"width": 16, "depth": 2}, "train": {"steps": 4},
                                   "optimizer": {"name": "adam", "lr": 1e-2},
                                   "eval": {"sharpness_every": 0, "test_every": 2}})) for i in range(2)]
    ex = EnsembleExecutor()
    results = dict(ex.run(cells))
    assert set(ex.engines.values()) == {"kernels"} and calls
    for r in results.values():
        losses = [row["train_loss"] for row in r.metrics]
        assert losses == [losses[0]] * len(losses)


def _radam_rectification(t: int, b2: float) -> float:
    """RAdam's r_t (Liu et al. 2020; torch.optim.RAdam's rect), from its definition in NumPy."""
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * t * b2 ** t / (1.0 - b2 ** t)
    return float(np.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)))


def test_decoupled_radam_groups_decaying_otherwise_hold_their_decoupled_shift():
    # torch's RAdam(decoupled_weight_decay=True) steps theta' = (1 - lr wd) theta - lr r_t P^-1 m': on a
    # mode of P^-1 H (of H while un-rectified, where r_t is no factor) the root -1 of that map is at
    # lr (1 - b1) r_t lam = (2 - lr wd)(1 + b1), a shift of wd (1 + b1) / (1 - b1) on the threshold
    # (over r_t once rectified). The batched operators hold the bias group's shift minus the weight
    # group's (the threshold's) on the bias rows; the decay was taken as a coupled L2: wd_1 - wd_0
    # on the Hessian's rows, 0 on the pre-conditioned ones
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 2).double() for _ in range(2)]
    names = [name for name, _ in models[0].named_parameters()]   # weight (group 0), bias (group 1)
    hps = [dict(b1=0.9, wd=(0.1, 0.4)), dict(b1=0.8, wd=(0.3, 0.05))]
    optimizers = [torch.optim.RAdam([{"params": [m.weight], "weight_decay": hp["wd"][0]},
                                     {"params": [m.bias], "weight_decay": hp["wd"][1]}],
                                    lr=1e-2, betas=(hp["b1"], 0.999), decoupled_weight_decay=True)
                  for m, hp in zip(models, hps)]
    stacked = StackedOptimizer("radam", optimizers, models, names)
    params = {n: torch.stack([dict(m.named_parameters())[n].detach().clone() for m in models]) for n in names}

    def shifts(hp):   # the bias rows' wd_1 (1 + b1) / (1 - b1) - wd_0 (1 + b1) / (1 - b1)
        return (hp["wd"][1] - hp["wd"][0]) * (1 + hp["b1"]) / (1 - hp["b1"])

    _, l2 = stacked.lr_scale([0, 1], params, torch.float64)   # un-rectified: SGD's operator
    np.testing.assert_allclose(l2[:, :6].numpy(), 0.0, atol=0)
    np.testing.assert_allclose(l2[:, 6:].numpy(), [[shifts(hp)] * 2 for hp in hps], rtol=1e-14, atol=0)
    gen = torch.Generator().manual_seed(1)
    while stacked.steps < 6:   # RAdam at b2 = 0.999 rectifies its 6th step; the next is the 7th
        stacked.step(params, {n: torch.randn(p.shape, dtype=torch.float64, generator=gen)
                              for n, p in params.items()}, [1e-2, 1e-2])
    grads = [torch.randn(params[n].shape, dtype=torch.float64, generator=gen) for n in names]
    _, l2 = stacked.preconditioner([0, 1], params, grads)
    r_7 = _radam_rectification(7, 0.999)
    np.testing.assert_allclose(l2[:, :6].numpy(), 0.0, atol=0)   # decoupled: no coupled-L2 term either
    np.testing.assert_allclose(l2[:, 6:].numpy(), [[shifts(hp) / r_7] * 2 for hp in hps], rtol=1e-13, atol=0)
    stacked.keep([1])   # a member that finished leaves: the other keeps its own beta2 and decays
    _, l2 = stacked.preconditioner([0], params={n: p[1:] for n, p in params.items()}, grads=[g[1:] for g in grads])
    np.testing.assert_allclose(l2[:, 6:].numpy(), [[shifts(hps[1]) / r_7] * 2], rtol=1e-13, atol=0)
