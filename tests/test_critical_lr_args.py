"""critical_lr refuses, with a message, a loss that does not depend on the optimizer's
parameters (it doubled the lr 64 times and returned ~1.8e15 with a warning) and a loss that is
not a scalar (it failed converting the loss to a float); its trials leave the model's
parameters unwritten."""
import pytest
import torch
import torch.nn as nn

import catapult


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    return model, (torch.randn(6, 2), torch.randn(6, 1))


def test_an_optimizer_of_another_model_is_refused():
    model, batch = problem()
    other = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="does not depend on any parameter of the optimizer"):
        catapult.critical_lr(model, nn.MSELoss(), batch, other)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_loss_that_is_not_a_scalar_is_named():
    model, batch = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor, got shape \(6, 1\)"):
        catapult.critical_lr(model, nn.MSELoss(reduction="none"), batch, opt)


def test_a_one_element_loss_is_a_scalar():
    model, batch = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = catapult.critical_lr(model, nn.MSELoss(), batch, opt)
    b = catapult.critical_lr(model, lambda o, t: nn.functional.mse_loss(o, t).reshape(1), batch, opt)
    assert a == b


def test_a_graph_the_caller_holds_survives_and_outside_parameters_are_restored():
    # trials wrote the parameters in place: "one of the variables needed for gradient
    # computation has been modified by an inplace operation" on the caller's next backward
    model, batch = problem()
    scale = nn.Parameter(torch.tensor(1.5))   # a loss_fn's own parameter, outside the model
    opt = torch.optim.SGD([*model.parameters(), scale], lr=0.1)

    def loss_fn(out, y):
        return nn.functional.mse_loss(out * scale, y)

    pending = nn.functional.mse_loss(model(batch[0]), batch[1])   # saves the model's weights
    versions = [p._version for p in model.parameters()]
    result = catapult.critical_lr(model, loss_fn, batch, opt)
    pending.backward()
    assert [p._version for p in model.parameters()] == versions
    assert scale.item() == 1.5 and result.lower < result.lr < float("inf")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_distributed_forward_passes_count_every_forward_of_the_model(reduction):
    # distributed=True tells a mean loss from a sum by the losses of the shard and its two halves:
    # three forward passes, left out of forward_passes (13 counted where the model ran 16)
    from catapult.curvature.distributed import single_process_group

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    batch = (torch.randn(6, 3), torch.randn(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with single_process_group():
        res = catapult.critical_lr(model, torch.nn.MSELoss(reduction=reduction), batch, opt, distributed=True)
    assert res.forward_passes == len(calls) >= 3 + 3
    calls.clear()
    alone = catapult.critical_lr(model, torch.nn.MSELoss(reduction=reduction), batch, opt)
    assert alone.forward_passes == len(calls) == res.forward_passes - 3
    assert (alone.lr, alone.lower) == (res.lr, res.lower)
