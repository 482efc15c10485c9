"""MaskUpdater's refusals the earlier tests left out: a negative start_step (GMP's t_0, a step
count: it is no step of any run), and tied layers whose one mask is cut into different row blocks
(``catapult_mask_parts``: each part keeps its own exact count, so the tie has no one update)."""
from __future__ import annotations

import pytest
import torch

from catapult.sparsity import MaskUpdater
from test_dynamic_sparsity_steps import _model
from test_sparsity_counts import _tied


@pytest.mark.parametrize("start_step", [-1, -100])
def test_a_negative_start_step_is_refused_naming_it(start_step):
    with pytest.raises(ValueError, match=rf"^MaskUpdater start_step must be an integer in \[0, 1000000000\]; got {start_step}$"):
        MaskUpdater(_model(1.0), "gmp", final_density=0.5, start_step=start_step, end_step=10)
    MaskUpdater(_model(1.0), "gmp", final_density=0.5, start_step=0, end_step=10)   # step 0 is one


def test_tied_layers_whose_mask_is_cut_into_different_parts_are_refused():
    net, a, b = _tied()
    a.catapult_mask_parts = 2      # e.g. a fused projection's blocks on one side of the tie only
    assert torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="share one weight but have different masks"):
        MaskUpdater(net, "rigl", update_every=1, end_step=10)
    b.catapult_mask_parts = 2
    MaskUpdater(net, "rigl", update_every=1, end_step=10)   # the same parts: one mask


@pytest.mark.parametrize("fraction", [True, "0.5", None])
def test_rigl_update_refuses_a_fraction_that_is_not_a_number(fraction):
    # True was a fraction of 1 (every active entry dropped and regrown), "0.5" met Python's own TypeError
    from catapult.sparsity import rigl_update

    weight, grad = torch.randn(4, 4), torch.randn(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    with pytest.raises(ValueError, match="rigl_update fraction must be a finite number in"):
        rigl_update(weight, mask, grad, fraction)
