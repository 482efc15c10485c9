"""The public contract (design/api.md): "Nothing here may change a model's parameters or an
optimizer's state unless it says so."

A sweep over the read-only public functions x models (MLP, GPT with dropout, a small WRN, a
user model with BatchNorm and dropout) x dtypes (float32, float64) x train/eval mode: each call
must leave the parameters, buffers, ``.grad``, ``requires_grad``, every module's mode, the
optimizer's state and param groups, and the torch / NumPy / Python global random streams
bitwise as they were.
"""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import catapult
from catapult.optim import GIAdam


class UserNet(nn.Module):
    """A user's model with the layers that carry hidden state: BatchNorm and dropout, and a
    frozen layer (``requires_grad=False``)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(8, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.net(x))


def _mse_onehot(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def _gpt_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _make(name: str, dtype: torch.dtype):
    """(model, loss_fn, batch) for ``name`` in ``dtype``; seeded, small."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    if name == "mlp":
        model = catapult.models.MLP(6, 3, width=8, depth=3, parametrization="mup", base_width=4)
        batch = (torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g))
        loss_fn = F.cross_entropy
    elif name == "user":
        model = UserNet()
        batch = (torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g))
        loss_fn = _mse_onehot
    elif name == "gpt":
        model = catapult.models.GPT(11, d_model=8, n_layers=1, n_heads=2, context=6, dropout=0.2)
        batch = (torch.randint(0, 11, (3, 6), generator=g), torch.randint(0, 11, (3, 6), generator=g))
        loss_fn = _gpt_loss
    elif name == "wrn":
        model = catapult.models.WRN(3, 4, depth=10, widen=1, channels=2)
        batch = (torch.randn(2, 3, 6, 6, generator=g), torch.randint(0, 4, (2,), generator=g))
        loss_fn = F.cross_entropy
    else:  # pragma: no cover
        raise AssertionError(name)
    model = model.to(dtype)
    x, y = batch
    if x.is_floating_point():
        x = x.to(dtype)
    return model, loss_fn, (x, y)


def _optimizer(kind: str, model, loss_fn, batch):
    """An optimizer that has taken two steps (so it holds state; ``fresh_...``: none, and none
    may be created), with stale ``.grad`` left on the parameters from a third backward, and
    per-group lr multipliers."""
    fresh = kind.startswith("fresh_")
    kind = kind.removeprefix("fresh_")
    groups = catapult.param_groups(model, 1e-3, optimizer="sgd" if kind == "sgd" else "adam")
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    elif kind == "adam":
        opt = torch.optim.Adam(groups, lr=1e-3, betas=(0.8, 0.95), weight_decay=1e-4)
    else:
        opt = GIAdam(groups, lr=1e-3, weight_decay=1e-4)
    x, y = batch
    for _ in range(0 if fresh else 2):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    loss_fn(model(x[:2]), y[:2]).backward()  # stale gradients the call must keep
    return opt


def _snapshot(model, opt):
    params = [(n, p.detach().clone(), p.dtype, p.requires_grad,
               None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()]
    return {
        "params": params,
        "param_ids": [id(p) for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "buffers": [(n, b.clone()) for n, b in model.named_buffers()],
        # in-place writes, even ones undone later, break a graph the caller holds
        "versions": [t._version for t in (*model.parameters(), *model.buffers())],
        "hooks": [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for n, m in model.named_modules()],
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "opt": copy.deepcopy(opt.state_dict()),
        "opt_state_keys": [sorted(opt.state[p].keys()) for p in model.parameters() if p in opt.state],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _same(a, b):
    """Bitwise equality of nested snapshots (tensors, arrays, containers, scalars)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    return a == b


def _assert_untouched(before, after, skip=()):
    for key in before:
        if key in skip:
            continue
        assert _same(before[key], after[key]), f"{key} changed"


CALLS = {
    "sharpness": lambda m, f, b, o: catapult.sharpness(m, f, b, tol=1e-2, max_iter=4),
    "sharpness_ggn": lambda m, f, b, o: catapult.sharpness(m, f, b, tol=1e-2, max_iter=4,
                                                           curvature="ggn"),
    "sharpness_fp64_lean": lambda m, f, b, o: catapult.sharpness(m, f, b, tol=1e-2, max_iter=4,
                                                                 dtype=torch.float64, memory="lean"),
    "sharpness_for": lambda m, f, b, o: catapult.sharpness(m, f, b, tol=1e-2, max_iter=4,
                                                           hvp="forward_over_reverse"),
    "preconditioned_sharpness": lambda m, f, b, o: catapult.preconditioned_sharpness(
        m, f, b, o, tol=1e-2, max_iter=4, scale_by_group_lr=True),
    "instability_threshold": lambda m, f, b, o: catapult.instability_threshold(o),
    "critical_lr": lambda m, f, b, o: catapult.critical_lr(m, f, b, o, lr_start=1e-3, lr_max=1e3),
    "top_eigenpairs": lambda m, f, b, o: catapult.top_eigenpairs(m, f, b, k=2, tol=1e-2, max_iter=6),
    "hessian_trace": lambda m, f, b, o: catapult.hessian_trace(m, f, b, matvecs=6),
    # 128 points: the default sigma (1% of the nodes' range) wants >= 107 for a grid that does not warn
    "spectral_density": lambda m, f, b, o: catapult.spectral_density(m, f, b, runs=1, steps=4,
                                                                     grid_points=128),
    "param_groups": lambda m, f, b, o: catapult.param_groups(m, 0.1, optimizer="adam"),
}

MODELS = ["mlp", "user", "gpt", "wrn"]
DTYPES = [torch.float32, torch.float64]


def _call(call, name, dtype, train, kind):
    model, loss_fn, batch = _make(name, dtype)
    opt = _optimizer(kind, model, loss_fn, batch)
    model.train(train)
    if name == "gpt" and train:
        model.blocks[0].eval() if hasattr(model, "blocks") else None  # a mixed-mode model
    np.random.seed(3)
    random.seed(3)
    before = _snapshot(model, opt)
    CALLS[call](model, loss_fn, batch, opt)
    return before, _snapshot(model, opt)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_public_read_only_calls_leave_everything_untouched(call, name, dtype):
    kind = "adam" if call == "preconditioned_sharpness" else "sgd"
    # dropout / BatchNorm live in train mode; memory="lean" splits the batch, which refuses them
    train = name in ("user", "gpt") and not call.endswith("lean")
    before, after = _call(call, name, dtype, train, kind)
    _assert_untouched(before, after)


KINDS = ["sgd", "adam", "giadam", "fresh_sgd", "fresh_adam", "fresh_giadam"]


@pytest.mark.parametrize("call, kind", [(c, k) for c in ("critical_lr", "instability_threshold",
                                                         "preconditioned_sharpness")
                                        for k in KINDS
                                        if not (c == "preconditioned_sharpness" and k.endswith("sgd"))])
def test_optimizer_state_untouched_for_each_optimizer(call, kind):
    before, after = _call(call, "user", torch.float64, True, kind)
    _assert_untouched(before, after)
    if kind.startswith("fresh_"):
        assert after["opt"]["state"] == {}


@pytest.mark.parametrize("name", MODELS)
def test_attach_changes_only_the_groups_lr(name):
    """attach says so about the learning rates (it sets each group's lr to fn(0) * lr_mult, and
    torch's LRScheduler adds ``initial_lr``); nothing else may change."""
    model, loss_fn, batch = _make(name, torch.float32)
    opt = _optimizer("adam", model, loss_fn, batch)
    random.seed(3)
    before = _snapshot(model, opt)
    catapult.schedules.attach(opt, catapult.schedules.warmup(0.5, 4))
    after = _snapshot(model, opt)
    _assert_untouched(before, after, skip=("opt",))
    assert _same(before["opt"]["state"], after["opt"]["state"])
    for g0, g1 in zip(before["opt"]["param_groups"], after["opt"]["param_groups"]):
        assert g1["lr"] == pytest.approx(0.125 * g1.get("lr_mult", 1.0))
        assert {k: v for k, v in g1.items() if k not in ("lr", "initial_lr")} == \
            {k: v for k, v in g0.items() if k != "lr"}
