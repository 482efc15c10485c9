"""GIAdam.load_state_dict refuses a parameter state that is not an Adam state (step, exp_avg,
exp_avg_sq): another optimizer's, as torch writes it. An Adamax state (exp_inf) loaded and stepped
with a second moment drawn afresh mid-run; an SGD state (momentum_buffer) loaded and the next step
raised KeyError 'step'. Truth: the states torch's own optimizers write; torch Adam's loads."""
from __future__ import annotations

import pytest
import torch

from catapult.optim import GIAdam


def _saved(cls, **options):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    opt = cls(model.parameters(), **options)
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    return model, opt.state_dict()


@pytest.mark.parametrize("cls, options, key", [
    (torch.optim.Adamax, {"weight_decay": 0.0}, "exp_inf"),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "momentum_buffer"),
    (torch.optim.NAdam, {}, "mu_product"),
])
def test_another_optimizers_state_is_refused_before_anything_changes(cls, options, key):
    model, saved = _saved(cls, **options)
    opt = GIAdam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=rf"the state of parameter 0 has \[.*'{key}'.*\], not an Adam state"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == {} and opt.param_groups[0]["lr"] == 0.01
    # torch Adam's state (the same keys) still loads, and steps on from its count
    _, adam = _saved(torch.optim.Adam)
    opt.load_state_dict(adam)
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    assert float(opt.state[model.weight]["step"]) == 2.0



def test_a_parameter_state_lacking_adams_second_moment_is_refused():
    # a torch Adam state with exp_avg_sq removed (a hand-trimmed checkpoint): GIAdam would draw it
    # afresh at the next step, mid-run, as its first step's v_0
    model, saved = _saved(torch.optim.Adam)
    for entry in saved["state"].values():
        del entry["exp_avg_sq"]
    opt = GIAdam(model.parameters())
    with pytest.raises(ValueError, match=r"the state of parameter 0 has \['exp_avg', 'step'\], not an Adam state"):
        opt.load_state_dict(saved)


@pytest.mark.parametrize("cls, options, key", [
    (torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.5}, "'dampening', 'momentum', 'nesterov'"),
    (torch.optim.NAdam, {}, "'momentum_decay'"),
    (torch.optim.Adamax, {"weight_decay": 0.5}, "neither 'v0' .* nor 'amsgrad'"),
    (torch.optim.RAdam, {}, "neither 'v0' .* nor 'amsgrad'"),
])
def test_another_optimizers_group_without_parameter_state_is_refused_naming_its_keys(cls, options, key):
    # S: an SGD(lr=0.1, weight_decay=0.5) group before any step has no parameter state, and
    # GIAdam loaded it: lr 0.1 taken as Adam's and SGD's coupled L2 decay (0.5 * theta added to
    # the gradient) as a decoupled one (theta *= 1 - lr * 0.5). Truth: torch's own state_dicts
    # and the keys torch writes for each optimizer's group.
    model = torch.nn.Linear(2, 2)
    saved = cls(model.parameters(), **options).state_dict()
    assert saved["state"] == {}
    opt = GIAdam(model.parameters(), lr=0.01)
    before = str(opt.state_dict())
    with pytest.raises(ValueError, match=rf"state_dict param group 0: has {key}.* param group of another optimizer"):
        opt.load_state_dict(saved)
    assert str(opt.state_dict()) == before
    # torch Adam's and AdamW's groups (amsgrad) and GIAdam's own (v0) still load, with a
    # scheduler's initial_lr and any key a user added to the group
    for other in (torch.optim.Adam(model.parameters(), lr=0.2), torch.optim.AdamW(model.parameters(), lr=0.2),
                  GIAdam(model.parameters(), lr=0.2)):
        other.param_groups[0].update(initial_lr=0.2, name="body")
        saved = other.state_dict()
        if isinstance(other, torch.optim.AdamW):   # torch 2.2 writes no flag, and its decay is refused without it
            saved["param_groups"][0].setdefault("decoupled_weight_decay", True)
        opt.load_state_dict(saved)
        assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["name"] == "body"
