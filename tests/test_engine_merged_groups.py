"""The engine's optimizer merges neighbouring param groups whose settings are equal
(``param_groups(merge=True)``): torch's optimizers pay a fixed cost per group and step (~94 µs of
a 2.75 ms batch-128 Adam step of the digits MLP with SP's five equal groups). Truth: SP's
multipliers are all 1 (one group), muP's Adam table (hidden at ``1 / width_mult``), the runs of
the unmerged optimizer (the same numbers, bit for bit) and a state saved from it."""
from __future__ import annotations

import copy

import pytest
import torch

import catapult
from catapult import engine
from catapult.engine import build
from catapult.engine.build import build_run
from catapult.optim import GIAdam

KINDS = ["input", "vector", "hidden", "output", "output_bias"]


def _config(parametrization: str, optimizer: dict, **extra) -> dict:
    return {"seed": 1, "dtype": "float64", "data": {"name": "digits", "n_train": 64, "n_test": 16},
            "model": {"width": 16, "depth": 4, "parametrization": parametrization, "base_width": 4},
            "optimizer": optimizer, "train": {"steps": 4, "batch_size": 16},
            "eval": {"sharpness_every": 2, "test_every": 2}, **extra}


def test_the_engine_builds_one_group_per_run_of_equal_settings():
    sp = build_run(_config("sp", {"name": "adam", "lr": 1e-3})).optimizer.param_groups
    assert [(g["name"], g["lr_mult"]) for g in sp] == [("+".join(KINDS), 1.0)]
    mup = build_run(_config("mup", {"name": "adam", "lr": 1e-3})).optimizer.param_groups
    assert [(g["name"], g["lr_mult"]) for g in mup] == [
        ("input+vector", 1.0), ("hidden", 0.25), ("output+output_bias", 1.0)]
    model = build_run(_config("sp", {"name": "adam", "lr": 1e-3})).model
    assert len(sp[0]["params"]) == len(list(model.parameters()))


def test_param_groups_merges_only_when_asked():
    model = build_run(_config("sp", {"name": "sgd", "lr": 0.1})).model
    assert [g["name"] for g in catapult.param_groups(model, 0.1)] == KINDS
    order = [p for g in catapult.param_groups(model, 0.1) for p in g["params"]]
    (merged,) = catapult.param_groups(model, 0.1, merge=True)
    assert all(p is q for p, q in zip(merged["params"], order)) and len(merged["params"]) == len(order)
    with pytest.raises(TypeError, match="merge must be True or False"):
        catapult.param_groups(model, 0.1, merge="yes")


def _unmerged(model, lr, kind):
    return catapult.param_groups(model, lr, optimizer=kind)


@pytest.mark.parametrize("parametrization,optimizer", [
    ("sp", {"name": "adam", "lr": 1e-3}),
    ("mup", {"name": "gi-adam", "lr": 1e-3, "v0": "random"}),   # v0's seed is the flat index
])
def test_runs_are_the_unmerged_runs_bit_for_bit(monkeypatch, parametrization, optimizer):
    config = _config(parametrization, optimizer)
    merged = engine.run(copy.deepcopy(config), progress="none").metrics
    monkeypatch.setattr(build, "_param_groups", _unmerged)
    unmerged = engine.run(copy.deepcopy(config), progress="none").metrics
    assert len(merged) == 5 and merged == unmerged


def _stepped(model, optimizer, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        optimizer.step()


def test_a_state_saved_with_one_group_per_kind_loads_and_continues_alike():
    run = build_run(_config("sp", {"name": "adam", "lr": 1e-3}))
    twin = copy.deepcopy(run.model)
    old = torch.optim.Adam(catapult.param_groups(twin, 1e-3), lr=1e-3)   # the engine's groups before the merge
    _stepped(twin, old, 3, seed=0)
    with torch.no_grad():
        for p, q in zip(run.model.parameters(), twin.parameters()):
            p.copy_(q)
    run.optimizer.load_state_dict(copy.deepcopy(old.state_dict()))   # as torch.load gives it: not old's tensors
    assert [g["name"] for g in run.optimizer.param_groups] == ["+".join(KINDS)]
    _stepped(twin, old, 2, seed=1)
    _stepped(run.model, run.optimizer, 2, seed=1)
    for p, q in zip(run.model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_saved_state_whose_merged_groups_differ_is_refused():
    run = build_run(_config("sp", {"name": "adam", "lr": 1e-3}))
    old = torch.optim.Adam(catapult.param_groups(copy.deepcopy(run.model), 1e-3), lr=1e-3)
    state = old.state_dict()
    state["param_groups"][2]["lr"] = 5e-4
    with pytest.raises(ValueError, match="'input' and 'hidden' differ in lr"):
        run.optimizer.load_state_dict(state)
    assert run.optimizer.param_groups[0]["lr"] == 1e-3 and not run.optimizer.state


def test_a_gi_adam_state_of_other_shapes_is_refused_after_the_merge():
    run = build_run(_config("sp", {"name": "gi-adam", "lr": 1e-3}))
    other = build_run(dict(_config("sp", {"name": "gi-adam", "lr": 1e-3}),
                           model={"width": 8, "depth": 4, "parametrization": "sp"})).model
    old = GIAdam(catapult.param_groups(other, 1e-3), lr=1e-3)
    _stepped(other, old, 1, seed=0)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(8, 64\), the parameter it loads into \(16, 64\)"):
        run.optimizer.load_state_dict(copy.deepcopy(old.state_dict()))


def test_merge_keeps_apart_neighbours_whose_weight_decay_differs():
    # truth: the GPT-2 rule param_groups documents, per parameter (ndim >= 2 decays, 1-D does not);
    # a merge that compared lr and lr_mult alone gave the biases the matrices' weight decay
    from catapult.models import MLP

    model = MLP(3, 2, width=8, depth=3)
    unmerged = catapult.param_groups(model, 0.1, "adamw", weight_decay=0.1)
    merged = catapult.param_groups(model, 0.1, "adamw", weight_decay=0.1, merge=True)
    for groups in (unmerged, merged):
        assert all(g["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0) for g in groups for p in g["params"])
    order = [p for g in unmerged for p in g["params"]]
    assert all(p is q for p, q in zip([p for g in merged for p in g["params"]], order))
    assert len(order) == len(list(model.parameters()))
    # SP: the neighbours hidden and output (both matrices) merge; input and vector (biases) do not
    assert [g["name"] for g in merged] == ["input", "vector", "hidden+output", "output_bias"]


def test_a_saved_state_with_groups_beyond_this_optimizers_parameters_is_refused():
    # the saved groups' first five fill this optimizer's one group; a sixth (a parameter this model
    # lacks) is no state of this optimizer: torch's loader refuses the group count, nothing loads
    run = build_run(_config("sp", {"name": "adam", "lr": 1e-3}))
    twin = copy.deepcopy(run.model)
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    old = torch.optim.Adam(catapult.param_groups(twin, 1e-3) + [{"params": [extra], "name": "extra"}], lr=1e-3)
    extra.grad = torch.ones(3, dtype=torch.float64)
    _stepped(twin, old, 1, seed=0)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        run.optimizer.load_state_dict(copy.deepcopy(old.state_dict()))
    assert not run.optimizer.state


def test_a_saved_state_whose_groups_hold_no_params_list_is_left_to_torchs_loader():
    # an edited checkpoint: the merge hook reads no group it cannot count (a raw KeyError or
    # TypeError from inside it), torch's loader refuses the group count, nothing loads
    run = build_run(_config("sp", {"name": "adam", "lr": 1e-3}))
    state = torch.optim.Adam(catapult.param_groups(copy.deepcopy(run.model), 1e-3), lr=1e-3).state_dict()
    for broken in (None, "0 1"):
        state["param_groups"][1]["params"] = broken
        with pytest.raises(ValueError, match="different number of parameter groups"):
            run.optimizer.load_state_dict(copy.deepcopy(state))
    del state["param_groups"][1]["params"]
    with pytest.raises(ValueError, match="different number of parameter groups"):
        run.optimizer.load_state_dict(copy.deepcopy(state))
    assert not run.optimizer.state
