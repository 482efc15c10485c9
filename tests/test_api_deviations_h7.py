"""Small API deviations from torch.optim / optax conventions (helper h7): each test fails on the code before its fix."""
import math

import pytest
import torch

from catapult import instability_threshold, schedules
from catapult.optim import GIAdam
from catapult.config import ConfigError, validate


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_a_decay_to_an_lr_final_above_lr_target_is_refused(decay):
    # before: warmup(1.0, 2, decay="cosine", total_steps=5, lr_final=2.0) rose 0.5, 1.0, 1.25, 1.75, 2.0
    with pytest.raises(ValueError, match=r"lr_final \(2\).*lr_target \(1\)"):
        schedules.warmup(1.0, 2, decay=decay, total_steps=5, lr_final=2.0)
    with pytest.raises(ValueError, match="lr_final"):
        schedules.catapult_warmup(1.0, 4, 0.25, decay=decay, total_steps=8, lr_final=1.5)
    flat = schedules.warmup(1.0, 2, decay=decay, total_steps=5, lr_final=1.0)  # lr_final == lr_target: flat
    assert [flat(t) for t in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_the_config_refuses_an_lr_final_above_an_absolute_lr_and_build_one_above_a_resolved_lr():
    with pytest.raises(ConfigError) as info:
        validate({"optimizer": {"lr": 1.0}, "schedule": {"decay": "cosine", "lr_final": 2.0},
                  "train": {"steps": 10}})
    assert info.value.keys == ["schedule.lr_final"]
    validate({"optimizer": {"lr": 1.0}, "schedule": {"decay": "cosine", "lr_final": 1.0}, "train": {"steps": 10}})
    # a c/lambda0 lr is known at build time only: a ConfigError there (the CLI's exit 2), before any search
    from catapult.engine.build import build_schedule
    config = validate({"optimizer": {"lr": "2/lambda0"}, "schedule": {"decay": "linear", "lr_final": 0.5},
                       "train": {"steps": 10}})
    with pytest.raises(ConfigError) as info:
        build_schedule(config, 0.25)
    assert info.value.keys == ["schedule.lr_final"]
    assert build_schedule(config, 1.0)(9) == 0.5


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1, maximize=True),
                                  lambda p: torch.optim.Adam(p, lr=0.1, maximize=True),
                                  lambda p: GIAdam(p, lr=0.1, maximize=True)])
def test_instability_threshold_refuses_maximize_as_critical_lr_does(make):
    # before: SGD gave 2 / lr = 20 and Adam 380, bounds on the sharpness of -loss_fn, not loss_fn's
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="instability_threshold: param group 0 has maximize=True"):
        instability_threshold(make(w))
    # a group without parameters does not step: its flag is not read
    opt = torch.optim.SGD([{"params": w}, {"params": [], "maximize": True}], lr=0.1)
    assert instability_threshold(opt) == pytest.approx(20.0)


def test_a_block_of_previous_eigenvectors_as_init_is_told_to_pass_one_row():
    # before: "init has 27 elements but the model has 9 trainable parameter entries"
    from catapult import sharpness, top_eigenpairs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    batch = (torch.randn(16, 2), torch.randn(16, 1))
    eig = top_eigenpairs(model, torch.nn.MSELoss(), batch, k=3)
    for solve in (lambda init: top_eigenpairs(model, torch.nn.MSELoss(), batch, k=3, init=init),
                  lambda init: sharpness(model, torch.nn.MSELoss(), batch, init=init)):
        with pytest.raises(ValueError, match=r"one flat start vector of 9 entries, got a 3 x 9 block.*eig\.vectors\[0\]"):
            solve(eig.vectors)
        with pytest.raises(ValueError, match="init has 8 elements but the model has 9"):
            solve(torch.ones(8))
        # no block of whole vectors: none empty, of another width, or of more than 2 dimensions (mutation pass 10)
        for shape in ((0, 9), (3, 5), (3, 1, 9)):
            with pytest.raises(ValueError, match=rf"init has {math.prod(shape)} elements but the model has 9"):
                solve(torch.ones(shape))
    again = top_eigenpairs(model, torch.nn.MSELoss(), batch, k=3, init=eig.vectors[0])
    assert again.values[0] == pytest.approx(eig.values[0], rel=1e-3)


@pytest.mark.parametrize("foreach", [False, True])
def test_gi_adam_keeps_a_tensor_lr_as_torch_adam_does(foreach):
    # before: GIAdam(lr=torch.tensor(0.1)) stored 0.1 as a float, so a scheduler that fills the tensor in place
    # (torch's LRScheduler on a tensor lr) changed nothing the optimizer read
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    lr = torch.tensor(0.1)
    opt = GIAdam([w], lr=lr, v0=0.0, foreach=foreach)
    assert opt.param_groups[0]["lr"] is lr and opt.defaults["lr"] is lr
    assert torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr).param_groups[0]["lr"] is lr
    lr.fill_(0.5)  # the scheduler's write; the step reads it: a first Adam step moves each entry by lr
    w.grad = torch.tensor([0.5, -4.0])
    opt.step()
    assert w.detach().tolist() == pytest.approx([0.5, -1.5], abs=1e-6)
    with pytest.raises(ValueError, match="lr"):
        GIAdam([w], lr=torch.tensor([0.1, 0.2]))


def test_gi_adam_takes_a_one_element_tensor_lr_of_any_shape_as_torch_adam_does():
    # torch.optim.Adam keeps lr=torch.tensor([0.1]) (one element, 1-D) as it keeps a 0-d one (mutation pass 10)
    lr = torch.tensor([0.1])
    assert torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr).param_groups[0]["lr"] is lr
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = GIAdam([w], lr=lr, v0=0.0)
    assert opt.param_groups[0]["lr"] is lr
    lr.fill_(0.5)
    w.grad = torch.tensor([0.5, -4.0])
    opt.step()   # a first Adam step moves each entry by lr
    assert w.detach().tolist() == pytest.approx([0.5, -1.5], abs=1e-6)
