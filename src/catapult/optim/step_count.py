"""The step count a torch optimizer's next update uses, as torch computes it.

torch's Adam, AdamW and RAdam keep each parameter's ``state["step"]`` as a float32 tensor (float64
under a float64 default dtype; ``capturable`` or not) and add 1 to it in place before each update,
whose bias corrections ``1 - b^t`` and RAdam's rectification ``r_t`` then read it. float32 holds
every count up to ``2**24``; there ``float32(2**24 + 1) == 2**24``, so the count stops and every
later update reuses ``t = 2**24``. A threshold or a pre-conditioner built from the state is of the
update torch takes, so it reads the count as torch does (:func:`torch_next_step`), not the true
number of updates. (GI-Adam keeps a float64 count, exact to ``2**53``.)

The engines' own loop counts its updates exactly; :func:`counted_step` is that count as the
optimizer it runs holds it, :func:`count_in` as a count of a given dtype holds it (the batched
engines' stacked update, which keeps no torch state, counts its updates as its members' torch
optimizers would).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["torch_next_step", "counted_step", "count_in"]


def torch_next_step(step: Any) -> int:
    """The 1-based count ``t`` of the next update of a parameter whose state holds ``step``:
    ``step + 1`` computed in the count's own dtype, as torch does (a float32 count stops at
    ``2**24``); a plain number (a state written by hand, or by an old torch): exactly ``step + 1``.

    Example:
        >>> torch_next_step(torch.tensor(5.0)), torch_next_step(7)
        (6, 8)
        >>> torch_next_step(torch.tensor(2.0 ** 24))               # float32: the count stops there
        16777216
        >>> torch_next_step(torch.tensor(2.0 ** 24, dtype=torch.float64))
        16777217
    """
    if isinstance(step, torch.Tensor):
        # float() reads the count exactly (any device, as before); + 1 in its own dtype is torch's in-place add
        return int((torch.tensor(float(step), dtype=step.dtype) + 1).item())
    return int(float(step)) + 1


def counted_step(optimizer: torch.optim.Optimizer, t: int) -> int:
    """torch's count for update ``t`` (1-based) of ``optimizer``, every parameter stepped at each
    update: ``t`` while the dtype of its state's ``step`` holds it exactly, that dtype's limit after
    (float32: ``2**24``; float64: ``2**53``). ``t`` as given where the state holds no tensor count
    yet (before the first update; an optimizer that counts in numbers).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.Adam([w])
        >>> w.grad = torch.ones(1); opt.step()
        >>> counted_step(opt, 2), counted_step(opt, 2 ** 24 + 5)
        (2, 16777216)
    """
    count = next((state["step"] for state in optimizer.state.values()
                  if isinstance(state, dict) and isinstance(state.get("step"), torch.Tensor)), None)
    return count_in(None if count is None else count.dtype, t)


def count_in(dtype: torch.dtype | None, t: int) -> int:
    """Update ``t``'s count (1-based) as a count of ``dtype`` holds it, 1 added in place before
    each update as torch adds it: ``t`` while ``dtype`` holds it exactly, that dtype's limit after
    (float32: ``2**24``; float64: ``2**53``). ``t`` as given for ``None`` (no tensor count) or an
    integer dtype.

    Example:
        >>> count_in(torch.float32, 2 ** 24 - 1), count_in(torch.float32, 2 ** 24 + 5)
        (16777215, 16777216)
        >>> count_in(torch.float64, 2 ** 24 + 5), count_in(None, 2 ** 60)
        (16777221, 1152921504606846976)
    """
    if dtype is None or not dtype.is_floating_point:
        return t
    # the first integer whose successor the dtype cannot hold: 2 / eps (2**24 for float32's eps 2**-23)
    return min(t, round(2.0 / torch.finfo(dtype).eps))
