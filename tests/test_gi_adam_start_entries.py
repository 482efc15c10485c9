"""Mutation pass 12 (GIAdam.start_entries_ called on its own, as its docstring promises): the
entries' first moment restarts at 0, ``v0="random"`` draws again from the parameter's seed plus
its step count (the norm of the entries' ``g^2``: rules.initial_second_moment's closed form), and
a ``where`` or ``grad`` of another shape than the parameter's is refused."""
from __future__ import annotations

import pytest
import torch

from catapult.optim import GIAdam


def _stepped(steps: int, **options) -> tuple[torch.nn.Parameter, GIAdam]:
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = GIAdam([w], lr=0.1, **options)
    for t in range(steps):
        w.grad = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) * (t + 1)
        opt.step()
    return w, opt


def test_the_started_entries_first_moment_is_zero_and_the_others_are_kept():
    w, opt = _stepped(2)
    before = opt.state[w]["exp_avg"].clone()
    assert bool((before != 0).all())
    where = torch.tensor([False, True, True, False])
    opt.start_entries_(w, where, torch.tensor([9.0, 4.0, -3.0, 9.0], dtype=torch.float64))
    m, v = opt.state[w]["exp_avg"], opt.state[w]["exp_avg_sq"]
    assert m.tolist() == [before[0].item(), 0.0, 0.0, before[3].item()]
    assert v[where].tolist() == [16.0, 9.0]    # v0="grad": g^2
    assert float(opt.state[w]["step"]) == 2.0  # the step count is kept


def test_random_v0_draws_the_started_entries_afresh_at_each_step_count():
    where = torch.tensor([True, True, True, False])
    grad = torch.tensor([1.0, 2.0, -2.0, 5.0], dtype=torch.float64)
    drawn = {}
    for steps in (1, 2):
        for run in range(2):
            w, opt = _stepped(steps, v0="random", seed=11)
            opt.start_entries_(w, where, grad)
            v = opt.state[w]["exp_avg_sq"][where]
            # v_0 = r ||g^2|| / ||r||: positive, with the norm of the entries' g^2
            assert bool((v > 0).all())
            assert float(v.norm()) == pytest.approx(float((grad[where] ** 2).norm()), rel=1e-12)
            drawn.setdefault(steps, []).append(v.clone())
    assert torch.equal(*drawn[1]) and torch.equal(*drawn[2])   # seeded
    assert not torch.allclose(drawn[1][0], drawn[2][0])          # another draw at another step count


@pytest.mark.parametrize("where, grad", [(torch.tensor([True]), torch.ones(4)),
                                         (torch.ones(4, dtype=torch.bool), torch.ones(1))])
def test_a_where_or_grad_of_another_shape_is_refused_naming_the_shapes(where, grad):
    w, opt = _stepped(1)
    before = {k: v.clone() for k, v in opt.state[w].items()}
    with pytest.raises(ValueError, match=r"start_entries_: where .* must have the parameter's shape \(4,\)"):
        opt.start_entries_(w, where, grad.double())
    assert all(torch.equal(before[k], v) for k, v in opt.state[w].items())
