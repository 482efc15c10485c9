"""The batched engines' optimizer update (:class:`catapult.sweep.batched_optim.StackedOptimizer`,
which the hand-derived kernels apply member span by member span, fused into their gradient pass)
equals each member's own torch optimizer in float64, and goes through :mod:`catapult.optim.rules`."""
from __future__ import annotations

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
