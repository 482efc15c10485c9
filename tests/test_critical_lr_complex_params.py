"""critical_lr's next-step direction for complex parameters. torch's Adam, AdamW and RAdam step a complex
parameter as its real and imaginary parts (``view_as_real``: one ``v`` per part); the direction took
``v`` from the complex square ``g^2``, a direction up to 1.0 (in lr units) off torch's first Adam step,
and amsgrad's ``maximum`` raised ``RuntimeError: maximum not implemented for complex tensors``. Truth:
the torch optimizer's own next step, ``theta' = theta - lr u``."""
from __future__ import annotations

import pytest
import torch

from catapult.critical_lr import next_step_direction

CASES = [
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.1}),
    (torch.optim.AdamW, {"weight_decay": 0.1}),
    (torch.optim.RAdam, {"betas": (0.9, 0.9)}),         # rectified from step 6 on
]


@pytest.mark.parametrize("cls, options", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_the_direction_of_a_complex_parameter_is_torchs_next_step(cls, options):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.complex128, generator=gen))
    opt = cls([w], lr=0.125, **options)
    for _ in range(8):
        g = torch.randn(3, dtype=torch.complex128, generator=gen)
        ((p, u),) = next_step_direction(opt, {w: g})
        assert p is w and u.dtype == torch.complex128
        before = w.detach().clone()
        w.grad = g
        opt.step()
        torch.testing.assert_close(u, (before - w.detach()) / 0.125, rtol=0.0, atol=1e-12)
