"""Module attributes catapult replaces on a model compiled before (catapult.compiled_state).

torch 2.2.2's compiled modules keep the tensors and numbers they traced when a module's
attribute is replaced, and are not traced again: a sparse layer's new mask (``set_mask``), a
mask taken off (``set_mask(None)``), a second ``parametrize``'s multipliers and a mask the
RigL/GMP updater gives a tie of its own never reached the compiled forward, whose gradient then
differed from the model's (set_mask: 0.26 on a 16 x 16 layer). Truth: the same model run
uncompiled. Each case runs on this torch's ``torch.compile`` (2.2.2 kept the traced attributes)
and on a backend that keeps them as 2.2.2 does (so 2.13, which traces again, is checked as well),
with the probe answering as 2.2.2's does.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult.compiled_state as compiled_state
from catapult import parametrize
from catapult.sparsity import MaskUpdater, masked_modules, random_mask, sparsify_

X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def _net(sparse: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16),
                          nn.Tanh(), nn.Linear(16, 2))
    if sparse:
        sparsify_(model[2], 0.5)
        sparsify_(model[4], 0.5)
    return model


def _keeping_traced_attributes(model: nn.Module):
    """A dynamo backend that runs the graph with the module tensors it was traced with, whatever
    the module holds later (what torch 2.2.2's compiled modules do)."""
    def backend(graph, example_inputs):
        held = {id(t) for t in [*model.parameters(), *model.buffers()]}
        kept = {i: t for i, t in enumerate(example_inputs) if id(t) in held}

        def run(*args):
            return graph(*[kept.get(i, a) for i, a in enumerate(args)])
        return run
    return backend


def _set_new_mask(model):
    model[2].set_mask(random_mask(model[2].weight.shape, 0.25, generator=torch.Generator().manual_seed(3)))


def _take_mask_off(model):
    model[2].set_mask(None)
    with torch.no_grad():
        model[2].weight.add_(1.0)   # the pruned entries count again


def _parametrize_again(model):
    parametrize(model, "mup", base_width=2)   # after base_width=4: other multipliers


def _updater_owns_masks(model):
    model[4].set_mask(model[2].mask)    # one mask tensor given to two untied layers, before compiling


CHANGES = {"set_mask": _set_new_mask, "set_mask(None)": _take_mask_off, "parametrize again": _parametrize_again,
           "MaskUpdater's own masks": None}


def _gradients(forward, model):
    model.zero_grad()
    out = forward(X)
    out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("emulated", [False, True], ids=["this torch", "2.2's kept attributes"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_compiled_model_computes_with_the_attributes_catapult_replaced(change, emulated, monkeypatch):
    torch._dynamo.reset()
    model = _net(sparse=change != "parametrize again")
    if change == "parametrize again":
        parametrize(model, "mup", base_width=4)
    shared = change == "MaskUpdater's own masks"
    if shared:
        _updater_owns_masks(model)
    if emulated:   # the probe answers as on 2.2.2, and the backend keeps what it traced as 2.2.2 does
        monkeypatch.setattr(compiled_state, "compiled_modules_follow_attributes", lambda: False)
    forward = torch.compile(model, backend=_keeping_traced_attributes(model) if emulated else "eager")
    forward(X)   # traced here
    if shared:
        MaskUpdater(model, "gmp", update_every=1, end_step=4, final_density=0.25)   # the second layer's own copy
        masks = [m.mask for _, m in masked_modules(model)]
        assert masks[0] is not masks[1]
        with torch.no_grad():
            masks[1].zero_()   # the updater's writes, in place, into the second layer's own mask
            masks[1][:, :3] = True
    else:
        CHANGES[change](model)
    out, grads = _gradients(forward, model)
    want_out, want_grads = _gradients(model, model)
    torch.testing.assert_close(out, want_out, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_nothing_is_traced_again_where_nothing_was_compiled(monkeypatch):
    # a process that compiled nothing pays no probe and clears nothing
    import sys

    def refuse():
        raise AssertionError("probed")
    monkeypatch.setattr(compiled_state, "compiled_modules_follow_attributes", refuse)
    monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
    assert compiled_state.retrace_compiled() is False


def test_nothing_is_probed_where_dynamo_is_imported_but_traced_nothing(monkeypatch):
    # (mutation pass 18's CS6, judged in pass 19) dynamo imported (torch imports it for a meta-device
    # model) with no frame traced: no probe (one compile of the private module; on torch 2.2.2 the
    # probe's False then cleared the caches and answered True), False. CS6 skipped the frames check.
    import collections

    import torch._dynamo

    def refuse():
        raise AssertionError("probed")
    monkeypatch.setattr(compiled_state, "compiled_modules_follow_attributes", refuse)
    monkeypatch.setattr(torch._dynamo.utils, "counters", collections.defaultdict(collections.Counter))
    assert compiled_state.retrace_compiled() is False
    torch._dynamo.utils.counters["frames"]["total"] += 1   # a frame traced: the probe is asked
    with pytest.raises(AssertionError, match="probed"):
        compiled_state.retrace_compiled()


def _compile_keeping(follows: bool, first_wrong: bool = False):
    """A stand-in for torch.compile on the probe's module: its compiled call reads the module's buffer and
    float as they are now (``follows``, torch 2.13) or as they were at its first call (torch 2.2.2);
    ``first_wrong``: its first call's value is off (a compile that cannot be trusted)."""
    def compile_(module, backend=None, **kwargs):
        traced = {}

        def run(x):
            first = not traced
            if first or follows:
                traced.update(scale=module.scale.clone(), factor=module.factor)
            elif follows is None:   # the buffer read anew, the float kept as traced
                traced.update(scale=module.scale.clone())
            return x * traced["scale"] * traced["factor"] * (0.5 if first and first_wrong else 1.0)
        return run
    return compile_


@pytest.mark.parametrize("follows, first_wrong", [(True, False), (False, False), (True, True), (None, False)])
def test_the_probe_says_whether_replaced_attributes_are_read(monkeypatch, follows, first_wrong):
    # (mutation pass 18, CS1, CS2) the probe's verdict is the second call's value: 6.0 (the new buffer 2 and
    # float 3) where compiled modules follow, 1.0 where they keep the traced ones, then False; and a first
    # call off its 1.0 is a compile that cannot be trusted: False; (CS3) one that reads the new buffer but
    # keeps the traced float (2.0) does not follow either
    probe = compiled_state.compiled_modules_follow_attributes
    probe.cache_clear()
    try:
        monkeypatch.setattr(torch, "compile", _compile_keeping(follows, first_wrong))
        assert probe() is (bool(follows) and not first_wrong)
    finally:
        probe.cache_clear()


def test_a_torch_that_cannot_compile_the_probe_does_not_follow(monkeypatch):
    # (mutation pass 19's CS8, of pass 18) torch.compile raising on the probe's module: no compile to
    # trust, False (CS8 answered True: no retrace where one might be needed)
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")
    probe = compiled_state.compiled_modules_follow_attributes
    probe.cache_clear()
    try:
        monkeypatch.setattr(torch, "compile", broken)
        assert probe() is False
    finally:
        probe.cache_clear()
