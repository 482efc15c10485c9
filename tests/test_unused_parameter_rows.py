"""A trainable parameter the loss never reaches (an unused module: HF's pooler, a branch the forward
skips) keeps ``.grad = None``, and torch's Adam / SGD step skips it: no move, no weight decay. The
pre-conditioned operator gave it the coupled-L2 rows ``P^-1 wd`` with ``P`` from ``g + wd theta = wd
theta`` alone: ``1 / |theta|``, and ``wd / eps`` at a zero entry (a LayerNorm's bias, a zeroed
bias): ``preconditioned_sharpness`` and ``SharpnessTracker`` read that row (S: 1e6 beside the 417.7
the step has, ratio 26 instead of 0.011). SGD with groups decaying differently likewise gave it the
row ``wd_i - wd_0``. Truth: the same model without the unused module, the same optimizer state
(its step is the same), and the dense Hessian for SGD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from dense_curvature import dense_hessian

LOSS = torch.nn.MSELoss()


class WithUnused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        self.unused = torch.nn.LayerNorm(2)          # bias 0, weight 1

    def forward(self, x):
        return self.body(x)


def _trained(make, steps=10):
    torch.manual_seed(0)
    model = WithUnused().double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 3, generator=gen, dtype=torch.float64), torch.randn(16, 1, generator=gen, dtype=torch.float64))
    opt = make(model)
    for _ in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    return model, batch, opt


def _body_only(opt, model, make):
    """The optimizer over the body alone, holding the same state and settings."""
    body = make(model.body)
    saved = opt.state_dict()
    n = len(list(model.body.parameters()))
    body.load_state_dict({"state": {i: saved["state"][i] for i in range(n) if i in saved["state"]},
                          "param_groups": [dict(saved["param_groups"][0], params=list(range(n)))]})
    return body


ADAM = {"adam_l2": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=0.01)}


@pytest.mark.parametrize("steps", [10, 0])
def test_adam_coupled_l2_leaves_an_unused_parameter_out(steps):
    model, batch, opt = _trained(ADAM["adam_l2"], steps)
    assert opt.state.get(model.unused.bias, {}) == {} and model.unused.bias.grad is None   # never stepped
    body = _body_only(opt, model, ADAM["adam_l2"])
    truth = catapult.preconditioned_sharpness(model.body, LOSS, batch, body, tol=1e-12, max_iter=200).value
    got = catapult.preconditioned_sharpness(model, LOSS, batch, opt, tol=1e-12, max_iter=200)
    assert got.value == pytest.approx(truth, rel=1e-9)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.value == pytest.approx(truth, rel=1e-9)


def test_sgd_groups_decaying_differently_leave_an_unused_parameter_out():
    def make(m):
        return torch.optim.SGD([{"params": m.body.parameters()}, {"params": m.unused.parameters(), "weight_decay": 50.0}],
                               lr=1e-3) if isinstance(m, WithUnused) else torch.optim.SGD(m.parameters(), lr=1e-3)
    model, batch, opt = _trained(make)
    H = dense_hessian(model.body, LOSS, batch).numpy()
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.value == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-9)     # not 50


def test_radam_rectified_beside_an_unused_parameter_is_measured():
    """The unused parameter has no step count (never stepped): RAdam's rectified step was refused as
    'part momentum SGD, part Adam's' though that parameter does not move."""
    def make(m):
        return torch.optim.RAdam(m.parameters(), lr=1e-3, weight_decay=0.01)
    model, batch, opt = _trained(make)
    body = _body_only(opt, model, make)
    truth = catapult.preconditioned_sharpness(model.body, LOSS, batch, body, tol=1e-12, max_iter=200).value
    got = catapult.preconditioned_sharpness(model, LOSS, batch, opt, tol=1e-12, max_iter=200)
    assert got.value == pytest.approx(truth, rel=1e-9)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.kind == "preconditioned" and record.value == pytest.approx(truth, rel=1e-9)


def test_a_parameter_reached_on_one_micro_batch_is_used():
    # (mutation pass 19, UP1) the loss of micro-batch 1 reaches `first` only, that of micro-batch 2
    # `second` only: over the batch both are used (UP1 kept the last piece's answer: `first` unused)
    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second, self.never = (torch.nn.Linear(3, 1).double() for _ in range(3))

        def forward(self, x):   # each sample through `first` or `second`, as its sign says
            out, pos = x.new_zeros(len(x), 1), x[:, 0] > 0
            for rows, layer in ((pos, self.first), (~pos, self.second)):
                if rows.any():
                    out = out.index_put((rows,), layer(x[rows]))
            return out

    x = torch.ones(4, 3, dtype=torch.float64)
    x[2:] = -1.0
    op = catapult.curvature.HessianOperator(Branches(), LOSS, (x, torch.zeros(4, 1, dtype=torch.float64)), chunk_size=2)
    assert op.chunks == 2 and op.unused_parameters() == {"never.weight", "never.bias"}
