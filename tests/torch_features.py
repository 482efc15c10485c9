"""Markers for tests of features newer than torch 2.2, the oldest torch pyproject.toml accepts:
on an older torch catapult refuses them with a message naming the version (checked where it
does), and the tests that use them skip, saying why."""
from __future__ import annotations

import functools

import pytest


def has_fsdp2() -> bool:
    """FSDP2's public names (torch 2.6 and later)."""
    import importlib

    try:
        fsdp = importlib.import_module("torch.distributed.fsdp")
        tensor = importlib.import_module("torch.distributed.tensor")
    except ImportError:
        return False
    return all(hasattr(fsdp, n) for n in ("fully_shard", "FSDPModule")) and hasattr(tensor, "DTensor")


FSDP2 = pytest.mark.skipif(not has_fsdp2(), reason="needs FSDP2 (torch.distributed.fsdp.fully_shard, "
                                                   "torch.distributed.tensor): torch 2.6 or later")



@functools.lru_cache(maxsize=None)
def compiles_under_func() -> bool:
    """Whether a ``torch.compile``'d module runs under ``torch.func`` with the parameters
    ``functional_call`` gives it, and a compiled function under ``torch.func`` at all:
    forward-over-reverse products (``jvp`` of ``grad``) through them equal the uncompiled ones. Torch 2.2.2's dynamo raises "Cannot access data pointer of Tensor that
    doesn't have storage" there, and outside a transform reads the weight it traced instead of the
    one substituted (catapult refuses such a torch for compiled models: ``refuse_stale_compiled``)."""
    import warnings

    import torch

    class Probe(torch.nn.Module):   # a class of its own: no cache slot of torch's modules
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))

        def forward(self, x):
            return torch.tanh(x @ self.weight)

    probe = Probe()
    compiled = torch.compile(probe, backend="eager")
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    w, v = torch.tensor([0.3, 0.2], dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64)

    def loss(module, name):
        return lambda weight: torch.func.functional_call(module, {name: weight}, (x,)).pow(2).sum()

    def activation(h):
        return torch.tanh(h) * 1.5

    def through(f):
        return lambda y: f(y).pow(2).sum()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(x)                                             # traced at the module's own weight
            moved = torch.func.jvp(torch.func.grad(loss(compiled, "_orig_mod.weight")), (w,), (v,))[1]
            plain = loss(compiled, "_orig_mod.weight")(w)
            # a compiled function (no module) under the same transforms
            function = torch.func.jvp(torch.func.grad(through(torch.compile(activation, backend="eager"))), (w,), (v,))[1]
    except Exception:   # noqa: BLE001 -- torch's own failure under the transforms
        return False
    truth = torch.func.jvp(torch.func.grad(loss(probe, "weight")), (w,), (v,))[1]
    return bool(torch.allclose(moved, truth) and torch.allclose(plain, loss(probe, "weight")(w))
                and torch.allclose(function, torch.func.jvp(torch.func.grad(through(activation)), (w,), (v,))[1]))


def needs_compile_under_func(test):
    """Skip ``test`` where :func:`compiles_under_func` says no (probed at the test's run, not at collection)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        if not compiles_under_func():
            pytest.skip("needs torch.compile'd modules under torch.func with substituted parameters (torch 2.2.2's "
                        "dynamo raises \"Cannot access data pointer of Tensor that doesn't have storage\" and reads "
                        "the traced weights): a newer torch")
        return test(*args, **kwargs)
    return run


def meta_factories_import_sympy() -> bool:
    """Whether a bare ``torch.ones(2, device="meta")`` imports sympy, in a fresh process (torch 2.2:
    its meta factories run Python references whose size checks import it; 2.13: no)."""
    import subprocess
    import sys

    probe = "import sys, torch\ntorch.ones(2, device='meta')\nprint('sympy' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    return out.returncode == 0 and out.stdout.strip() == "True"
