"""catapult.curvature.microbatch.functional_masks_off: scaled_dot_product_attention's dropout is off
inside it however dropout_p is passed (by keyword, or by position: the fifth argument). Truth: the
same call with dropout_p=0."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from catapult.curvature.microbatch import functional_masks_off


@pytest.mark.parametrize("how", ["keyword", "position"])
def test_attention_dropout_is_off_however_it_is_passed(how):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    truth = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    with functional_masks_off():
        for _ in range(3):   # a drawn mask would differ from the truth (p = 0.9) and from call to call
            out = (F.scaled_dot_product_attention(q, k, v, dropout_p=0.9) if how == "keyword"
                   else F.scaled_dot_product_attention(q, k, v, None, 0.9))
            torch.testing.assert_close(out, truth, rtol=0, atol=0)
