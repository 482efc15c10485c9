"""``schedules.scheduler``'s edges (mutation pass 14, a module no earlier pass mutated), per
``checked_lr``'s docstring: a schedule's value must be a number; ``True`` is no lr (it was taken as
1.0, the flag of some other setting handed in by mistake), and a one-element tensor is read.
Truth: the docstring's rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.schedules.scheduler import checked_lr


@pytest.mark.parametrize("flag", [True, False, np.bool_(True)])
def test_a_flag_is_no_learning_rate(flag):
    with pytest.raises(TypeError, match="expected a number"):
        checked_lr(lambda t: flag, 0)


def test_a_one_element_tensor_and_a_numpy_scalar_are_read():
    assert checked_lr(lambda t: torch.tensor([0.25]), 1) == 0.25
    assert checked_lr(lambda t: np.float32(0.5), 1) == 0.5


def test_attach_refuses_an_optimizer_without_groups():
    from catapult.schedules.scheduler import attach

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt.param_groups.clear()   # nothing left to set: the schedule did nothing, silently
    with pytest.raises(ValueError, match="no param groups"):
        attach(opt, lambda t: 0.1)
