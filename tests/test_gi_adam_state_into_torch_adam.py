"""GIAdam's and torch Adam's states loaded into each other continue as the optimizer that saved them
says. A GIAdam state_dict loaded into torch.optim.Adam keeps its weight decay decoupled: GIAdam's
groups said nothing of the decay's kind, and torch Adam (which defaults ``decoupled_weight_decay`` to
False for a group without it) continued with a coupled L2 penalty, 2.4e-3 off after one step at
wd=0.1. A torch Adam state loaded into GIAdam keeps Adam's bias correction of v. Truth: the saving
optimizer continuing (after the first step GI-Adam with bias correction is AdamW, the same
arithmetic: bit-equal)."""
from __future__ import annotations

import inspect
import io

import pytest
import torch

from catapult.optim import GIAdam

HAS_FLAG = "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters


def _params():
    torch.manual_seed(1)
    return [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]


def _grads(params, t):
    gen = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def _through_a_file(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _continue_alike(*runs):
    """Step each (optimizer, params) run on the same gradients for steps 3-5; every run's
    parameters end bit-equal to the first's."""
    for t in range(3, 6):
        for optimizer, params in runs:
            _grads(params, t)
            optimizer.step()
    first = runs[0][1]
    for _, params in runs[1:]:
        for a, b in zip(first, params):
            assert torch.equal(a, b)


@pytest.mark.skipif(not HAS_FLAG, reason="torch Adam has no decoupled_weight_decay before torch 2.6")
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_torch_adam_continues_a_gi_adam_state_with_its_decoupled_decay(cls):
    ours = _params()
    gi = GIAdam([{"params": [ours[0]]}, {"params": [ours[1]], "weight_decay": 0.3}], lr=0.01, weight_decay=0.1)
    for t in range(3):
        _grads(ours, t)
        gi.step()
    saved = _through_a_file(gi.state_dict())
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    torch_opt = cls([{"params": [theirs[0]]}, {"params": [theirs[1]]}], lr=0.5)
    torch_opt.load_state_dict(saved)
    _continue_alike((gi, ours), (torch_opt, theirs))
    assert [g["decoupled_weight_decay"] for g in saved["param_groups"]] == [True, True]


def test_the_flag_is_checked_and_a_state_saved_without_it_loads_decoupled():
    w = torch.nn.Parameter(torch.ones(2))
    assert GIAdam([w]).param_groups[0]["decoupled_weight_decay"] is True
    assert GIAdam([w], decoupled_weight_decay=False).param_groups[0]["decoupled_weight_decay"] is False  # no decay
    with pytest.raises(ValueError, match="decoupled_weight_decay=False with weight_decay=0.1"):
        GIAdam([w], weight_decay=0.1, decoupled_weight_decay=False)
    with pytest.raises(TypeError, match="decoupled_weight_decay must be True or False"):
        GIAdam([w], decoupled_weight_decay="yes")
    opt = GIAdam([w], weight_decay=0.1)
    w.grad = torch.ones(2)
    opt.step()
    old = opt.state_dict()
    old["param_groups"][0].pop("decoupled_weight_decay")      # as GIAdam wrote it before
    fresh = GIAdam([torch.nn.Parameter(torch.ones(2))])
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.parametrize("cls, options", [(torch.optim.AdamW, {"weight_decay": 0.1}), (torch.optim.Adam, {})])
def test_a_torch_adam_state_continues_with_vs_bias_correction_as_adamw_would(cls, options):
    # S: GIAdam(v_bias_correction=False) took a torch Adam state's v (started at 0, 1 - b2^t of its
    # size) uncorrected: the next step was 1 / sqrt(1 - 0.999^4) = 15.8x AdamW's. Truth: torch AdamW
    # (Adam) continuing; the two share the arithmetic, so bit-equal
    theirs = _params()
    torch_opt = cls(theirs, lr=0.01, **options)
    for t in range(3):
        _grads(theirs, t)
        torch_opt.step()
    saved = _through_a_file(torch_opt.state_dict())
    if cls is torch.optim.AdamW:    # torch 2.2 writes no flag, and its decay is refused without it
        saved["param_groups"][0].setdefault("decoupled_weight_decay", True)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    gi = GIAdam(ours, lr=0.5, v_bias_correction=False, v0=2.0)
    gi.load_state_dict(saved)
    assert "v_bias_correction" not in saved["param_groups"][0]      # the caller's dict is left as it was
    _continue_alike((gi, ours), (torch_opt, theirs))
    # GIAdam's own state keeps its setting
    own = GIAdam([torch.nn.Parameter(torch.ones(2))], v_bias_correction=False)
    other = GIAdam([torch.nn.Parameter(torch.ones(2))])
    other.load_state_dict(own.state_dict())
    assert other.param_groups[0]["v_bias_correction"] is False


def test_a_parameter_the_torch_state_had_not_started_starts_by_this_optimizers_v0():
    # S: a torch Adam/AdamW group has no v0, and the load set "grad" whatever GIAdam was built with: under
    # GIAdam(v0=0.0) (Adam's start) the parameter AdamW had not stepped yet moved 0.1 sqrt(1 - b2) =
    # 0.0032 at its first step for AdamW's 0.1. Truth: torch AdamW continuing (v0=0 is its arithmetic: bit-equal)
    theirs = _params()
    torch_opt = torch.optim.AdamW(theirs, lr=0.1, weight_decay=0.01)
    for t in range(2):
        _grads(theirs[:1], t)           # the second parameter gets no gradient: no state
        torch_opt.step()
    saved = _through_a_file(torch_opt.state_dict())
    saved["param_groups"][0].setdefault("decoupled_weight_decay", True)    # (torch 2.2 writes no flag)
    assert list(saved["state"]) == [0]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    gi = GIAdam(ours, lr=0.5, v0=0.0)
    gi.load_state_dict(saved)
    assert gi.param_groups[0]["v0"] == 0.0
    _continue_alike((gi, ours), (torch_opt, theirs))


def _two_groups_the_second_unstarted():
    """Two AdamW groups stepped twice, the second group's parameter never given a gradient (no state),
    and the state_dict read back from a file: (parameters, the optimizer, the saved state)."""
    theirs = _params()
    torch_opt = torch.optim.AdamW([{"params": theirs[:1]}, {"params": theirs[1:]}], lr=0.1, weight_decay=0.01)
    for t in range(2):
        _grads(theirs[:1], t)
        torch_opt.step()
    saved = _through_a_file(torch_opt.state_dict())
    for group in saved["param_groups"]:
        group.setdefault("decoupled_weight_decay", True)    # (torch 2.2 writes no flag)
    return theirs, torch_opt, saved


def test_a_parameter_the_torch_state_had_not_started_starts_by_its_own_groups_v0():
    # the load took the constructor's default v0 for every torch group: a group built with v0=0.0 (Adam's
    # start) under GIAdam(v0="grad") started its unstepped parameter by g^2. Truth: torch AdamW continuing
    theirs, torch_opt, saved = _two_groups_the_second_unstarted()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    gi = GIAdam([{"params": ours[:1]}, {"params": ours[1:], "v0": 0.0}], lr=0.5, v0="grad")
    gi.load_state_dict(saved)
    assert [g["v0"] for g in gi.param_groups] == ["grad", 0.0]
    _continue_alike((gi, ours), (torch_opt, theirs))


def test_a_parameter_the_torch_state_had_not_started_draws_v0_random_by_its_own_groups_seed():
    # S: the load gave a torch group its own group's v0 but the constructor's seed: a group built with
    # v0="random", seed=7 drew its unstepped parameter's v0 from seed 0 + 1. Truth: a GIAdam built with
    # that group, whose first step of that parameter is the same arithmetic (bit-equal)
    theirs, torch_opt, saved = _two_groups_the_second_unstarted()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in theirs]

    def groups(params):
        return [{"params": params[:1]}, {"params": params[1:], "v0": "random", "seed": 7}]

    gi = GIAdam(groups(ours), lr=0.5, v0="grad", seed=0)
    gi.load_state_dict(saved)
    assert [g["seed"] for g in gi.param_groups] == [0, 7]
    built = GIAdam(groups(fresh), lr=0.1, weight_decay=0.01, v0="grad", seed=0)
    for optimizer, params in ((gi, ours), (built, fresh)):
        _grads(params[1:], 3)           # only the parameter neither had started
        optimizer.step()
    assert not torch.equal(fresh[1], theirs[1])     # it moved
    assert torch.equal(ours[1], fresh[1])
