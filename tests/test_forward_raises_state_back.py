"""Exception safety of what the curvature API puts back: when the user's forward (or ``loss_fn``) raises
midway -- on the k-th call, after it moved the state it carries (``self.h = h.detach()``) -- the exception
reaches the caller as it was raised (the same object; a KeyboardInterrupt too), and the model and the
process are as they were before the call: the carried state object, parameters (values and objects),
buffers, ``.grad``, train/eval mode, requires_grad flags, hooks, the global RNG, grad mode, the
attention kernels' flags, the parametrize cache flag, torch function modes and saved-tensor hooks. A
training loop that skips a bad batch, or a notebook interrupted mid-call, goes on with the model it had.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

import catapult
from catapult.critical_lr import probe_loss


class Boom(Exception):
    """The user's own failure (a bad batch)."""


class Memory(nn.Module):
    """A running context vector carried to the next forward in a plain attribute; ``fail`` counts the
    forwards and raises on the k-th, after the state was rebound."""

    def __init__(self):
        super().__init__()
        self.inp, self.rec, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.norm = nn.BatchNorm1d(6)
        self.h = torch.zeros(6)
        self.fail = None   # (k, exception) or None

    def forward(self, x):
        z = torch.tanh(self.norm(self.inp(x) + self.rec(self.h)))
        self.h = z.mean(0).detach()
        self.count_down()
        return self.out(z)

    def count_down(self):
        """Raise ``fail``'s exception on its k-th forward (called after the state was rebound)."""
        if self.fail is not None:
            self.fail[0] -= 1
            if self.fail[0] == 0:
                raise self.fail[1]


class Mixed(Memory):
    """Memory with what the curvature API handles by context: a direct ``F.embedding(max_norm=)`` lookup
    (RenormedCopies, a torch function mode), a weight-normed layer (parametrize) and attention
    (``scaled_dot_product_attention``: the math kernel's flags) in its forward."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 6))
        self.mix = nn.utils.parametrizations.weight_norm(nn.Linear(6, 6))

    def forward(self, x):
        z = torch.tanh(self.norm(self.inp(x) + self.rec(self.h)))
        ids = torch.arange(x.shape[0]) % 4
        z = z + nn.functional.embedding(ids, self.table, max_norm=1.0)
        q = self.mix(z).unsqueeze(0)
        z = z + nn.functional.scaled_dot_product_attention(q, q, q).squeeze(0)
        self.h = z.mean(0).detach()
        self.count_down()
        return self.out(z)


def _world(model):
    """Everything the call may change and must put back (objects by identity, values by copy)."""
    from catapult.curvature.compiled import _attention_kernels, _hooks_enabled

    return dict(
        h=model.h, h_value=model.h.clone(),
        params=[(n, p, p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()],
        buffers=[(n, b, b.clone()) for n, b in model.named_buffers()],
        modes=[m.training for m in model.modules()],
        hooks=[(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        global_hooks=(len(nn.modules.module._global_forward_hooks), len(nn.modules.module._global_forward_pre_hooks)),
        rng=torch.get_rng_state(), grad=torch.is_grad_enabled(), kernels=_attention_kernels(),
        cache=P._cache_enabled, modes_stack=torch._C._len_torch_function_stack(), saved_hooks=_hooks_enabled(),
    )


def _same(before, after, where: str):
    assert after["h"] is before["h"] and torch.equal(after["h_value"], before["h_value"]), \
        f"the carried state moved ({where})"
    for (n, p, v, rg, g), (n2, p2, v2, rg2, g2) in zip(before["params"], after["params"]):
        assert n == n2 and p2 is p and torch.equal(v2, v) and rg2 == rg and g2 is g, f"{n} ({where})"
    for (n, b, v), (n2, b2, v2) in zip(before["buffers"], after["buffers"]):
        assert n == n2 and b2 is b and torch.equal(v2, v), f"{n} ({where})"
    for key in ("modes", "hooks", "global_hooks", "grad", "kernels", "cache", "modes_stack", "saved_hooks"):
        assert after[key] == before[key], f"{key} ({where})"
    assert torch.equal(after["rng"], before["rng"]), f"the global RNG moved ({where})"


def _batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)


OPTIONS = {
    "sharpness": {}, "sharpness_double_backprop": dict(hvp="double_backprop"),
    "sharpness_finite_difference": dict(hvp="finite_difference"), "sharpness_chunks": dict(chunk_size=4),
    "ggn": dict(curvature="ggn"), "ggn_chunks": dict(curvature="ggn", chunk_size=4),
    "sharpness_compiled": dict(hvp="compiled"),
}
OTHERS = {   # the other curvature entry points (their operators are the ones above)
    "preconditioned_sharpness": lambda m, loss_fn, b: catapult.preconditioned_sharpness(
        m, loss_fn, b, torch.optim.Adam(m.parameters()), tol=1e-3, max_iter=6),
    "top_eigenpairs": lambda m, loss_fn, b: catapult.top_eigenpairs(m, loss_fn, b, k=2, tol=1e-2, max_iter=8),
    "hessian_trace": lambda m, loss_fn, b: catapult.hessian_trace(m, loss_fn, b, matvecs=3),
    "spectral_density": lambda m, loss_fn, b: catapult.spectral_density(m, loss_fn, b, runs=1, steps=3),
    "sharpness_lean": lambda m, loss_fn, b: catapult.sharpness(m, loss_fn, b, tol=1e-3, max_iter=6, memory="lean"),
}
REFUSED = {"ggn_chunks", "sharpness_chunks", "sharpness_compiled", "sharpness_finite_difference", "sharpness_lean"}
NAMES = sorted([*OPTIONS, *OTHERS, "critical_lr", "probe_loss"])


def _caller(name: str, loss_fn=None):
    """``call(model, batch)`` for the API call ``name``."""
    loss_fn = nn.MSELoss() if loss_fn is None else loss_fn
    if name == "critical_lr":
        return lambda m, b: catapult.critical_lr(m, loss_fn, b, torch.optim.SGD(m.parameters(), lr=0.1), lr_start=1e-3)
    if name == "probe_loss":
        return lambda m, b: probe_loss(m, loss_fn, b)
    if name in OTHERS:
        return lambda m, b: OTHERS[name](m, loss_fn, b)
    return lambda m, b: catapult.sharpness(m, loss_fn, b, tol=1e-3, max_iter=6, **OPTIONS[name])


def _forwards(call, model, batch) -> int:
    """How many forwards ``call`` runs to their end on ``model`` (when nothing fails): those that reach
    ``count_down`` (preconditioned_sharpness's float64 check runs one more on Mixed, which torch stops
    before its end: its float32 state meets the float64 parameters, and the check is left out)."""
    count = [0]
    handle = model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        call(model, batch)
    finally:
        handle.remove()
    return count[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", [Memory, Mixed])
def test_forward_raising_on_any_call_leaves_the_model_as_it_was(name, kind):
    torch.manual_seed(0)
    model, batch = kind(), _batch()
    model.train()
    model.norm.eval()   # (running statistics: micro-batches run it as the whole batch)
    nn.functional.mse_loss(model(batch[0]), batch[1]).backward()   # .grad held (objects kept)
    model.h = torch.zeros(6)
    call = _caller(name)
    before = _world(model)
    try:
        total = _forwards(call, model, batch)
    except ValueError:   # a refusal of Mixed (micro-batches of attention, weight norm compiled, differences over
        # renormalised rows): the library's own exception, after forwards; the model as it was too
        assert kind is Mixed and name in REFUSED, name
        _same(before, _world(model), f"{name} refused")
        return
    assert total >= 1
    # the first forwards (state found), one in the middle and the last
    picks = sorted({1, 2, 3, max(1, total // 2), total} - {k for k in (2, 3) if k > total})
    for k in picks:
        for err in (Boom(f"bad batch at forward {k}"), KeyboardInterrupt()):
            before = _world(model)
            model.fail = [k, err]
            inside = []
            with pytest.raises(type(err)) as caught, P.cached():   # (a caller's cache flag is put back)
                try:
                    call(model, batch)
                finally:
                    inside.append(P._cache_enabled)
            assert inside == [1], "parametrize.cached()'s flag"
            model.fail = None
            assert caught.value is err
            _same(before, _world(model), f"{type(err).__name__} at forward {k} of {total}")


@pytest.mark.parametrize("name", NAMES)
def test_loss_fn_raising_leaves_the_model_as_it_was(name):
    """The same when ``loss_fn`` raises (after the forward moved the state) on its k-th call."""
    torch.manual_seed(0)
    model, batch = Memory(), _batch()
    model.norm.eval()
    for k in (1, 2, 4):
        err, count = Boom(f"loss {k}"), [0]

        def loss_fn(out, y, k=k, err=err):
            count[0] += 1
            if count[0] == k:
                raise err
            return nn.functional.mse_loss(out, y)

        before = _world(model)
        try:
            _caller(name, loss_fn)(model, batch)
        except Boom as caught:
            assert caught is err
        _same(before, _world(model), f"{name}: loss_fn raised at call {k}")


class FailingMemory(nn.Module):
    """test_stateful_forward_curvature's Memory (float64) whose forward raises on the k-th call, after it
    moved its state (``fail``: ``[k, message]``; every rank fails at the same forward)."""

    def __init__(self):
        from test_stateful_forward_curvature import memory_problem

        super().__init__()
        self.inner, self.batch = memory_problem(8)
        self.fail = None

    def forward(self, x):
        out = self.inner(x)
        if self.fail is not None:
            self.fail[0] -= 1
            if self.fail[0] == 0:
                raise Boom(self.fail[1])
        return out


def sharded_failures(rank, world, sharded=True):
    """On an FSDP2-sharded model (or, ``sharded=False``, an unsharded one): whether the carried state and this
    rank's rows are as they were after sharpness / critical_lr raised at forward k (every k up to the call's
    forwards)."""
    from torch.distributed.fsdp import fully_shard

    model = FailingMemory()
    x, y = model.batch
    if sharded:
        fully_shard(model.inner.inp)
        fully_shard(model)
    shard = (x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4])
    calls = {"sharpness": lambda: catapult.sharpness(model, nn.MSELoss(), shard, tol=1e-3, max_iter=4,
                                                     distributed=True),
             "critical_lr": lambda: catapult.critical_lr(model, nn.MSELoss(), shard,
                                                         torch.optim.SGD(model.parameters(), lr=0.1),
                                                         lr_start=1e-3, distributed=True)}
    def local(p):   # (a gathered root's plain parameter: not as it was)
        return p.detach() if not sharded else p.to_local() if hasattr(p, "to_local") else None

    out = {}
    for name, call in calls.items():
        total = _forwards(lambda m, b: call(), model, None)
        for k in sorted({1, 2, 3, total // 2, total}):
            state, rows = model.inner.h, [local(p).clone() for p in model.parameters()]
            model.fail = [k, f"forward {k}"]
            try:
                call()
                raised = "nothing"
            except Boom as err:
                raised = str(err)
            model.fail = None
            # FSDP2 leaves the root gathered after a forward that raised, as after any forward (its next training
            # step gives the same outputs with or without this); reset_iter_state, torch's documented recovery,
            # registers the shards again so that their rows can be read here
            if sharded:
                model.reset_iter_state()
            rows_kept = all(local(p) is not None and torch.equal(local(p), r) for p, r in zip(model.parameters(), rows))
            out[f"{name} at {k} of {total}"] = (raised, model.inner.h is state, rows_kept)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.skipif(not hasattr(getattr(torch.distributed, "fsdp", None), "FSDPModule")
                    or not hasattr(torch.distributed.fsdp.FSDPModule, "reset_iter_state"),
                    reason="FSDP2 without reset_iter_state (torch < 2.10)")
@pytest.mark.parametrize("sharded", [True, False])
def test_a_sharded_forward_raising_leaves_the_state_on_every_rank(sharded):
    """FSDP2 (ShardedHessianOperator's forwards, critical_lr's trials), or an unsharded model (the forwards
    that tell a mean loss from a sum, the all-reduced products), 2 gloo ranks: the caller gets the exception
    and the model's state and rows back."""
    from gloo_ranks import on_ranks

    for got in on_ranks(sharded_failures, sharded):
        wrong = [f"{where}: {got[where]}" for where, (raised, state_kept, rows_kept) in got.items()
                 if raised != f"forward {where.split(' at ')[1].split(' of ')[0]}" or not (state_kept and rows_kept)]
        assert not wrong, wrong


def test_a_persistent_warmup_step_that_raises_changes_nothing():
    """PersistentCatapultWarmup.step whose probe or search forward raises: the exception reaches the caller,
    and the warmup's progress, the optimizer's lrs and the model (its carried state) are as before."""
    from catapult.schedules import PersistentCatapultWarmup

    torch.manual_seed(0)
    model, batch = Memory(), _batch()
    model.norm.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = PersistentCatapultWarmup(opt, model, nn.MSELoss(), lr_target=10.0, lr_start=1e-3)
    failed = 0
    for k in (1, 2, 3, 5):
        for step_batch in (batch, (batch[0], batch[1] * 0.5)):   # (another loss: a probe, or a search)
            before, progress, lrs = _world(model), warmup.state_dict(), [g["lr"] for g in opt.param_groups]
            err = Boom(f"forward {k}")
            model.fail = [k, err]
            try:
                warmup.step(step_batch)
            except Boom as caught:
                assert caught is err
                failed += 1
                assert warmup.state_dict() == progress and [g["lr"] for g in opt.param_groups] == lrs
                _same(before, _world(model), f"warmup step, forward {k}")
            model.fail = None
    assert failed >= 4


def test_critical_lr_puts_back_a_loss_fns_own_parameter_when_a_trial_raises():
    """A parameter outside the model (a loss_fn's own temperature, in the optimizer) is moved in place by the
    trials: a trial forward that raises leaves it at its value (bitwise), with the exception the caller's."""
    torch.manual_seed(0)
    model, batch = Memory(), _batch()
    model.norm.eval()
    temperature = nn.Parameter(torch.tensor(1.3))

    def loss_fn(out, y):
        return nn.functional.mse_loss(out * temperature, y)

    opt = torch.optim.SGD([*model.parameters(), temperature], lr=0.1)
    for k in (2, 3, 5):
        value, before, err = temperature.detach().clone(), _world(model), Boom(f"trial {k}")
        model.fail = [k, err]
        with pytest.raises(Boom) as caught:
            catapult.critical_lr(model, loss_fn, batch, opt, lr_start=1e-3)
        model.fail = None
        assert caught.value is err and torch.equal(temperature.detach(), value)
        _same(before, _world(model), f"trial forward {k}")
