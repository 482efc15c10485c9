"""A part frozen by ``requires_grad=False`` listed first is passed over as one frozen by lr 0:
the lr-scaled operator, its multipliers and ``instability_threshold`` take the first group that
moves as their reference (``optim.thresholds.reference_group``). Truth: the multipliers by hand and
the dense Hessian's ``eigvalsh``."""
import numpy as np
import pytest
import torch

from catapult import instability_threshold
from catapult.optim.thresholds import (group_lr_multipliers, lr_scaled_sharpness, reference_group,
                                       unpreconditioned_kind)


def _setup(head_lrs, freeze_by):
    torch.manual_seed(0)
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    model = torch.nn.Sequential(body, torch.nn.Tanh(), head)
    body.requires_grad_(False)
    groups = [{"params": list(body.parameters()), "lr": 0.0 if freeze_by == "lr" else 0.1, "weight_decay": 0.3}]
    if len(head_lrs) == 1:
        groups.append({"params": list(head.parameters()), "lr": head_lrs[0], "weight_decay": 0.02})
    else:
        groups += [{"params": [head.weight], "lr": head_lrs[0], "weight_decay": 0.02},
                   {"params": [head.bias], "lr": head_lrs[1], "weight_decay": 0.02}]
    opt = torch.optim.SGD(groups)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    model.double()
    return model, opt, (x, y), head


def _dense_hessian(model, head, batch):
    x, y = batch
    h = model[1](model[0](x)).detach()
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()

    def loss(flat):
        w, b = flat[:3].view(1, 3), flat[3:]
        return torch.nn.functional.mse_loss(h @ w.T + b, y)

    return torch.autograd.functional.hessian(loss, torch.cat([w0.reshape(-1), b0])).numpy()


@pytest.mark.parametrize("freeze_by", ["requires_grad", "lr"])
def test_a_frozen_first_group_is_passed_over(freeze_by):
    model, opt, batch, head = _setup([0.05, 0.025], freeze_by)
    params = [head.weight, head.bias]
    assert reference_group(opt) is opt.param_groups[1]
    # by hand: each moving group's lr over the first mover's (0.05), not over the frozen body's 0.1
    assert group_lr_multipliers(opt, params).tolist() == [1.0, 1.0, 1.0, 0.5]
    # SGD's threshold at the mover's lr and decay: 2 / 0.05 - 0.02
    assert instability_threshold(opt) == pytest.approx(2 / 0.05 - 0.02, rel=1e-12)
    # the operator M^1/2 (H + W) M^1/2 - wd_0, M = diag(1, 1, 1, 0.5), W = 0.02 I: dense truth
    m = np.array([1.0, 1.0, 1.0, 0.5])
    dense = np.sqrt(m)[:, None] * (_dense_hessian(model, head, batch) + 0.02 * np.eye(4)) * np.sqrt(m)[None, :]
    truth = float(np.linalg.eigvalsh(dense)[-1]) - 0.02
    est = lr_scaled_sharpness(model, torch.nn.MSELoss(), batch, opt, tol=1e-10, max_iter=50)
    assert est.value == pytest.approx(truth, rel=1e-8)
    # the step's own stability, lambda_max(diag(lr)^1/2 (H + W) diag(lr)^1/2) < 2, read off either number
    lrs = np.array([0.05, 0.05, 0.05, 0.025])
    step = float(np.linalg.eigvalsh(np.sqrt(lrs)[:, None] * (dense / np.sqrt(m)[:, None] / np.sqrt(m)[None, :])
                                    * np.sqrt(lrs)[None, :])[-1])
    assert 0.05 * (est.value + 0.02) == pytest.approx(step, rel=1e-8)
    assert 0.05 * (instability_threshold(opt) + 0.02) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("freeze_by", ["requires_grad", "lr"])
def test_one_moving_group_behind_a_frozen_one_is_the_hessian(freeze_by):
    # the step moves the head alone, at one lr and one decay: the loss's own sharpness bounds it
    # (a body frozen by requires_grad=False at lr 0.1 made it 'lr_scaled', at half the Hessian's top)
    model, opt, batch, head = _setup([0.05], freeze_by)
    params = [head.weight, head.bias]
    assert unpreconditioned_kind(opt, params) == "hessian"
    truth = float(np.linalg.eigvalsh(_dense_hessian(model, head, batch))[-1])
    est = lr_scaled_sharpness(model, torch.nn.MSELoss(), batch, opt, tol=1e-10, max_iter=50)
    assert est.value == pytest.approx(truth, rel=1e-8)
    assert instability_threshold(opt) == pytest.approx(2 / 0.05 - 0.02, rel=1e-12)


@pytest.mark.parametrize("freeze_by", ["requires_grad", "lr_mult"])
def test_a_warmup_from_0_is_relative_to_the_group_that_moves_next(freeze_by):
    """Every group at lr 0 (a warmup from 0) with the body frozen first: the multipliers were the
    lr_mults over the body's (frozen by requires_grad=False: 0.5 and 0.25 for the head's 1 and 0.5
    from the next step on; frozen by lr_mult 0: every ratio 1), so the step-0 row measured another
    operator than the rows after it. Truth: the lrs the steps apply, lr_i / lr_head (by hand), and
    the dense Hessian's ``eigvalsh`` of ``M^1/2 H M^1/2``."""
    model, _, batch, head = _setup([0.05], "lr")
    body = model[0]
    if freeze_by == "lr_mult":
        body.requires_grad_(True)

    def optimizer(scale, mults):
        groups = [{"params": list(body.parameters()), "lr_mult": 1.0 if freeze_by == "requires_grad" else 0.0}]
        groups += [{"params": [p], "lr_mult": m} for p, m in zip((head.weight, head.bias), mults)]
        for g in groups:
            g["lr"] = 0.1 * scale * g["lr_mult"]
        return torch.optim.SGD(groups)

    params = [head.weight, head.bias]
    for mults in ((0.5, 0.25), (0.5, 0.5)):
        warm, cold = optimizer(1.0, mults), optimizer(0.0, mults)
        assert reference_group(cold) is cold.param_groups[1]
        m = np.array([1.0, 1.0, 1.0, mults[1] / mults[0]])
        assert group_lr_multipliers(cold, params).tolist() == group_lr_multipliers(warm, params).tolist() == m.tolist()
        kind = "hessian" if mults[0] == mults[1] else "lr_scaled"
        assert unpreconditioned_kind(cold, params) == unpreconditioned_kind(warm, params) == kind
        dense = np.sqrt(m)[:, None] * _dense_hessian(model, head, batch) * np.sqrt(m)[None, :]
        truth = float(np.linalg.eigvalsh(dense)[-1])
        est = lr_scaled_sharpness(model, torch.nn.MSELoss(), batch, cold, tol=1e-10, max_iter=50)
        assert est.value == pytest.approx(truth, rel=1e-8)


def test_with_no_group_moving_the_reference_is_the_first():
    """Mutation pass 20 (TH5): every group at lr 0 (a warmup from 0): the reference is the first group, as
    documented (TH5 took the last); the multipliers are then the lr_mult ratios to the first's."""
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.0, "momentum": 0.9, "lr_mult": 1.0},
                           {"params": [b], "lr": 0.0, "momentum": 0.5, "lr_mult": 0.25}], lr=0.0)
    assert reference_group(opt) is opt.param_groups[0]
    assert group_lr_multipliers(opt, [a, b]).tolist() == [1.0, 0.25, 0.25]
