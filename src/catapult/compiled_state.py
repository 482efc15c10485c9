"""Module attributes that catapult replaces, and code that ``torch.compile`` traced before.

torch 2.2.2's compiled modules keep reading the tensors and numbers they were traced with when a
module's attribute is replaced (a buffer or parameter assigned anew, a float multiplier, a mask
set to None), and they are not traced again: a sparse layer given a new mask by ``set_mask``
after its model's first compiled call took its gradient through the old mask (0.26 off on a 16
x 16 layer), and a second ``parametrize`` kept the first one's multipliers. torch 2.13 traces again.

Where catapult replaces such an attribute (:meth:`MaskedLinear.set_mask
<catapult.sparsity.MaskedLinear.set_mask>`, :func:`~catapult.parametrize`, a
:class:`~catapult.sparsity.MaskUpdater` that gives a tie its own mask) it calls
:func:`retrace_compiled` afterwards: on a torch whose compiled modules do not follow (probed,
once per process, on a private module), dynamo's caches are cleared, so every compiled function
traces again at its next call. Nothing happens, and dynamo is not imported, in a process that
compiled nothing. Writes in place (``tensor.copy_``, ``load_state_dict`` without ``assign``)
need none of this: every torch's compiled code reads them.
"""
from __future__ import annotations

import functools
import sys

import torch

__all__ = ["compiled_modules_follow_attributes", "retrace_compiled"]


class _Probe(torch.nn.Module):
    """``x * scale * factor``: a buffer and a float of its own for
    :func:`compiled_modules_follow_attributes` (its compiled code takes no cache slot of a user's class)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(1, device="cpu", dtype=torch.float32))
        self.factor = 1.0

    def forward(self, x):
        return x * self.scale * self.factor


@functools.lru_cache(maxsize=None)
def compiled_modules_follow_attributes() -> bool:
    """Whether a compiled module reads a buffer and a float attribute assigned after its first
    call (torch 2.13: yes; torch 2.2.2: it keeps the traced ones). Probed once per process on a
    private module compiled by dynamo's eager backend; a torch that cannot compile it says no.

    Example:
        >>> isinstance(compiled_modules_follow_attributes(), bool)
        True
    """
    try:
        probe = _Probe()
        compiled = torch.compile(probe, backend="eager")
        x = torch.ones(1, device="cpu", dtype=torch.float32)
        traced = float(compiled(x))
        probe.scale = torch.full((1,), 2.0, device="cpu", dtype=torch.float32)
        probe.factor = 3.0
        moved = float(compiled(x))
    except Exception:   # noqa: BLE001 -- any failure of torch.compile here: it cannot be trusted
        return False
    return traced == 1.0 and moved == 6.0


def retrace_compiled() -> bool:
    """Call after replacing a module's attribute: where this process has compiled code and its
    torch's compiled modules keep the attributes they traced (:func:`compiled_modules_follow_attributes`
    is False: torch 2.2.2), clear dynamo's caches (``torch._dynamo.reset()``), so that the next
    call of every compiled function traces the module as it is now. True if it cleared them.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> layer.register_buffer("mask", torch.ones(1, 2, dtype=torch.bool))
        >>> retrace_compiled() in (True, False)   # nothing compiled here: False
        True
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:   # nothing was compiled in this process (and dynamo is not imported for it)
        return False
    counters = getattr(getattr(dynamo, "utils", None), "counters", None)
    if counters is not None and not counters.get("frames", {}).get("total", 0):
        return False     # dynamo imported (torch does, for a meta-device model) but nothing traced
    if compiled_modules_follow_attributes():
        return False
    dynamo.reset()
    return True
