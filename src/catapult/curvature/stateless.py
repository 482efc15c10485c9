"""``torch.func.functional_call`` that leaves the model holding its own parameters and buffers.

Where one submodule is reachable by two paths (``self.dec = self.enc``, a block applied twice),
``functional_call`` (torch 2.13; pytorch/pytorch#164759) swaps the shared slot once per path and
restores it in the same order, so the slot ends up holding the tensor passed in, not the
model's Parameter: every curvature call and ``critical_lr`` replaced the model's weights by
detached copies, which the optimizer no longer held (its steps stopped moving the model), and
the next call saw no trainable parameter there.

An ``nn.Embedding`` (or ``nn.EmbeddingBag``) with ``max_norm`` renormalises the rows it looks up
in place, in its weight, inside every forward: through ``functional_call`` on detached aliases of
the parameters (the curvature operators) or on the model's own (``critical_lr``) that wrote the
model's weight, so ``catapult.sharpness`` and ``catapult.critical_lr`` changed a parameter
(:func:`renormed_copies`). Such a weight is passed as a copy.

A ``loss_fn`` that reads the model's parameters itself (an LM loss that takes the logits with the
tied embedding, ``hidden @ model.emb.weight.T``) read the model's own Parameter after
``functional_call`` had put it back, so the curvature operators differentiated that use as a
constant: a sharpness 2.6% low, ``converged`` (:func:`functional_loss` keeps the tensors in place
through the loss).

``F.embedding`` / ``F.embedding_bag`` called in a forward with ``max_norm`` (no module to see) wrote
the user's weight rows in place all the same, once per call (a row of norm 4.5 left at 1.0):
:class:`RenormedCopies` passes such a call a copy of its weight, in the forwards that precede the
operators' graph walk (and in ``critical_lr``'s first), which also tells whether any was made;
:class:`~catapult.curvature.twice.second_order_forms` does the same in the forwards after it.

Inside ``torch.nn.utils.parametrize.cached()`` (a user's evaluation or training step) a parametrized
weight is computed once and reused by every later forward: the curvature operators' forwards at
other parameters read the first one's value (finite differences and micro-batches 19% off,
``converged``; forward over reverse raised a TypeError), so every forward here computes it afresh
(:func:`parametrizations_uncached`).
"""
from __future__ import annotations

import contextlib
import inspect
import math

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["functional_call", "functional_loss", "Holder", "holding", "slots_kept", "renormed_copies",
           "has_renormed_embeddings", "parametrizations_uncached", "refuse_scripted", "renormed_lookup",
           "RenormedCopies", "batch_versions", "refuse_batch_written", "tensor_attributes", "AttributesKept",
           "refuse_parameters_written", "storage_of"]

_LOOKUPS = {f: inspect.signature(f) for f in (torch.nn.functional.embedding, torch.nn.functional.embedding_bag)}


def renormed_lookup(func, args, kwargs):
    """The bound arguments of ``func(*args, **kwargs)`` with the weight cloned (differentiably) where
    it is an ``F.embedding`` / ``F.embedding_bag`` call with ``max_norm`` (which renormalises the rows
    it looks up in place, in the weight it is given); None for any other call.

    >>> w = torch.full((2, 2), 3.0)
    >>> bound = renormed_lookup(torch.nn.functional.embedding, (torch.tensor([0]), w), {"max_norm": 1.0})
    >>> bound.arguments["weight"] is w, renormed_lookup(torch.nn.functional.embedding, (torch.tensor([0]), w), {})
    (False, None)
    """
    signature = _LOOKUPS.get(func)
    if signature is None:
        return None
    bound = signature.bind(*args, **kwargs)
    if bound.arguments.get("max_norm") is None:
        return None
    bound.arguments["weight"] = bound.arguments["weight"].clone()
    return bound


class RenormedCopies(TorchFunctionMode):
    """Context in which an ``F.embedding`` / ``F.embedding_bag`` call with ``max_norm`` renormalises a
    copy of its weight (:func:`renormed_lookup`), not the tensor it was given; ``seen``: whether one
    was made; ``room``: the least distance of a row looked up below its ``max_norm`` (negative where one
    is renormalised). The same value and derivatives: the lookup differentiates through the copy.

    >>> w = torch.full((2, 2), 3.0)
    >>> with RenormedCopies() as copies:
    ...     out = torch.nn.functional.embedding(torch.tensor([0]), w, max_norm=1.0)
    >>> w[0], copies.seen, round(float(out.norm()), 4)
    (tensor([3., 3.]), True, 1.0)
    """

    def __init__(self):
        super().__init__()
        self.seen = False
        self.room = math.inf   # the least max_norm - ||row|| over the rows looked up, per unit 2-norm shift

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LOOKUPS and (bound := renormed_lookup(func, args, kwargs)) is not None:
            self.seen = True
            self.room = min(self.room, _room(bound.arguments))
            return func(*bound.args, **bound.kwargs)
        return func(*args, **kwargs)


def _room(arguments) -> float:
    """How far the rows a max_norm lookup reads are below its max_norm (negative: renormalised), in
    the norm it takes, divided by that norm's bound on a row moved by 1 in 2-norm."""
    weight, ids = arguments["weight"].detach(), arguments["input"].reshape(-1)
    if ids.numel() == 0:
        return math.inf
    p = float(arguments.get("norm_type", 2.0))
    largest = float(torch.linalg.vector_norm(weight[ids], ord=p, dim=-1).max())
    return (float(arguments["max_norm"]) - largest) / weight.shape[-1] ** max(0.0, 1.0 / p - 0.5)


def refuse_scripted(owner: str, model: torch.nn.Module, mode: str | None = None) -> None:
    """A ValueError naming ``owner`` (where given) where ``model`` is, or holds, a TorchScript module
    (``torch.jit.script`` / ``torch.jit.trace``) with parameters or buffers, which ``functional_call``
    cannot replace: every curvature function and ``critical_lr`` raised "'OrderedDictWrapper' object
    has no attribute 'get'" for one. One without either (a scripted activation) is swapped nothing,
    and reverse-mode products measure it; torch.func's (``mode`` ``"forward_over_reverse"`` or
    ``"compiled"``) took its derivatives wrong (1.2953 and 1.8008 for 2.0723) and are refused (``"ggn"``,
    J v by differentiating a backward, is not).

    >>> refuse_scripted("sharpness", torch.nn.Linear(1, 1))
    >>> refuse_scripted("sharpness", torch.jit.script(torch.nn.Linear(1, 1)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sharpness: the model is (or holds) a TorchScript module ...
    >>> act = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.jit.script(torch.nn.Tanh()))
    >>> refuse_scripted("", act, "double_backprop")
    >>> refuse_scripted("", act, "forward_over_reverse")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hvp='forward_over_reverse': the model holds a TorchScript module ...
    """
    scripted = [m for m in model.modules() if isinstance(m, torch.jit.ScriptModule)]
    if any(next(m.parameters(), None) is not None or next(m.buffers(), None) is not None for m in scripted):
        raise ValueError(f"{owner + ': ' if owner else ''}the model is (or holds) a TorchScript module "
                         f"(torch.jit.script or trace), whose parameters cannot be swapped for the ones it is "
                         f"evaluated at; pass the nn.Module it was made from (the same weights)")
    if scripted and mode in ("forward_over_reverse", "compiled"):
        raise ValueError(f"hvp={mode!r}: the model holds a TorchScript module (torch.jit.script or trace), whose "
                         f"derivatives torch.func takes wrong (a scripted tanh: 1.2953 for 2.0723); "
                         f"hvp='double_backprop' (the default) or 'finite_difference' measures it, or pass the "
                         f"nn.Module it was made from")


def batch_versions(*trees) -> list[int]:
    """The version counters of the tensors in ``trees`` (nested tuples, lists, dicts): an in-place
    write to one moves its counter (:func:`refuse_batch_written`).

    >>> x = torch.zeros(2)
    >>> before = batch_versions((x, [x[:1]]))
    >>> _ = x.add_(1)
    >>> batch_versions((x, [x[:1]])) == before
    False
    """
    from catapult.curvature.microbatch import tensor_leaves   # (its containers: a dict subclass's too)

    return [t._version for t in tensor_leaves(list(trees))]


def refuse_batch_written(before: list[int], trees, owner: str = "") -> None:
    """A ValueError where a forward wrote the batch ``trees`` in place (its version counters moved
    from ``before``, :func:`batch_versions`): the model (``x.mul_(1.1)``) or ``loss_fn`` moves it
    again in every later forward, so each product saw another batch (the Gauss-Newton sharpness of
    such a model came out 5% high, converged; micro-batches were refused as a loss neither mean nor
    sum, and hvp='compiled' left the batch scaled 23-fold).

    >>> x = torch.zeros(2)
    >>> before = batch_versions(x)
    >>> refuse_batch_written(before, (x,))
    >>> _ = x.mul_(2)
    >>> refuse_batch_written(before, (x,))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the forward (the model or loss_fn) writes the batch in place ...
    """
    if batch_versions(*trees) != before:
        raise ValueError(f"{owner + ': ' if owner else ''}the forward (the model or loss_fn) writes the batch in "
                         f"place (an in-place op on its input, x.mul_(...), x += ...), so every later forward would "
                         f"see another batch (and your batch was written once already): write it out of place "
                         f"(x = x * ...) or pass a copy the model may write (then every forward writes it again)")


def storage_of(t: torch.Tensor):
    """``t.data_ptr()``, or None for a tensor without one (sparse: a frozen sparse Parameter).

    >>> storage_of(torch.zeros(2).to_sparse()) is None
    True
    """
    return t.data_ptr() if t.layout == torch.strided else None


def refuse_parameters_written(before: dict, tensors: dict) -> None:
    """A ValueError where a forward wrote parameters of ``tensors`` (``{name: tensor}``, aliases of the
    model's own) in place: their version counters moved from ``before`` (``{name: version}``). A clamp
    in the forward (WGAN's weight clipping) or a running value kept in a frozen Parameter changed the
    model's parameters in every curvature call; forward over reverse raised torch's error on the write,
    finite differences read it as a kink.

    ``before`` holds ``(version, data_ptr)``: a storage swap (``set_``: cuDNN's ``flatten_parameters``
    moves an RNN's weights into one buffer, values unchanged) is not counted as a write.

    >>> w = torch.zeros(2)
    >>> before = {"w": (w._version, storage_of(w))}
    >>> refuse_parameters_written(before, {"w": w})
    >>> _ = w.clamp_(-1, 1)
    >>> refuse_parameters_written(before, {"w": w})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the model's forward writes its parameter w in place ...
    """
    written = sorted(n for n, t in tensors.items() if n in before and t._version != before[n][0]
                     and storage_of(t) == before[n][1])
    if written:
        raise ValueError(f"the model's forward writes its parameter{'s' if len(written) > 1 else ''} "
                         f"{', '.join(written)} in place (a clamp_ / copy_ / running value under no_grad), which "
                         f"every curvature product would do again (this call's first forward has done it once): "
                         f"move the write out of the forward (after optimizer.step), or keep a running value in a "
                         f"buffer (register_buffer), which the curvature functions give every forward a copy of")


def tensor_attributes(model: torch.nn.Module) -> dict:
    """``{(module, name): (tensor, version)}`` for the tensors ``model``'s modules hold as plain
    attributes (neither parameters nor buffers: a recurrent state carried to the next batch, a cache).

    >>> model = torch.nn.Linear(1, 1)
    >>> model.h = torch.zeros(1)
    >>> [name for _, name in tensor_attributes(model)]
    ['h']
    """
    return {(m, k): (v, v._version) for m in model.modules() for k, v in m.__dict__.items()
            if isinstance(v, torch.Tensor)}


class AttributesKept:
    """The plain tensor attributes a forward rebinds (``self.h = h.detach()``: truncated backprop through
    time carries an RNN's state to the next batch), put back after each forward: every forward of one
    measurement starts from the state the model had, and the model keeps it (a stateful RNN's
    forward-over-reverse products raised torch's internal assert on the escaped state, finite
    differences read the moving state as a kink, double backprop left the state one batch on).
    :meth:`watch` finds them in a first forward; :meth:`restore` puts them back (a no-op where none
    moved). A state written in place (``self.h.copy_(h)``) cannot be put back: refused.

    >>> class Carry(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.h = torch.zeros(1)
    ...     def forward(self, x):
    ...         self.h = self.h + x
    ...         return self.h
    >>> model, kept = Carry(), AttributesKept()
    >>> with kept.watch(model):
    ...     _ = model(torch.ones(1))
    >>> model.h, [name for _, name in kept.moved]
    (tensor([0.]), ['h'])
    """

    _ABSENT = object()

    def __init__(self):
        self.moved: dict = {}   # {(module, name): what it held (a tensor, None, ...), or _ABSENT}

    @contextlib.contextmanager
    def watch(self, model: torch.nn.Module):
        before = tensor_attributes(model)
        held = {m: dict(vars(m)) for m in model.modules()}   # what a new tensor attribute replaced (self.mask = None)
        try:
            yield
        finally:
            after = tensor_attributes(model)
            written = [key[1] for key, (t, version) in before.items() if t._version != version]
            for key in set(before) | set(after):
                if before.get(key, (None,))[0] is not after.get(key, (None,))[0]:
                    module, name = key
                    self.moved[key] = held.get(module, {}).get(name, self._ABSENT)
            self.restore()
        if written:
            raise ValueError(f"the model's forward writes its attribute{'s' if len(written) > 1 else ''} "
                             f"{', '.join(sorted(written))} in place (a state kept across forwards), so every "
                             f"forward of the measurement would start from another state: rebind it (self.h = "
                             f"...) or pass the state in the batch")

    def __enter__(self):   # ``with kept:`` puts the state back on the way out, also where the body raised
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for (module, name), value in self.moved.items():
            if value is self._ABSENT:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = value


@contextlib.contextmanager
def parametrizations_uncached():
    """Parametrizations (``torch.nn.utils.parametrize``) computed at every access inside, even
    within a caller's ``parametrize.cached()``, whose cache is left as it was.

    >>> import torch.nn.utils.parametrize as P
    >>> with P.cached():
    ...     with parametrizations_uncached():
    ...         P._cache_enabled
    ...     P._cache_enabled
    0
    1
    """
    from torch.nn.utils import parametrize

    enabled = parametrize._cache_enabled
    if not enabled:
        yield
        return
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = enabled


@contextlib.contextmanager
def slots_kept(model: torch.nn.Module):
    """Put every module's own parameter and buffer objects back on exit (those that were
    replaced; the tensors themselves are not touched).

    >>> inner = torch.nn.Linear(1, 1)
    >>> model = torch.nn.Sequential(inner, inner)      # one Linear at two paths
    >>> weight = inner.weight
    >>> with slots_kept(model):
    ...     inner._parameters["weight"] = torch.zeros(1, 1)
    >>> inner.weight is weight
    True
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for module, params, buffers in saved:
            for store, kept in ((module._parameters, params), (module._buffers, buffers)):
                for name, tensor in kept.items():
                    if store.get(name) is not tensor:
                        store[name] = tensor


def has_renormed_embeddings(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.Embedding`` / ``nn.EmbeddingBag`` with ``max_norm`` (whose
    weight :func:`renormed_copies` copies).

    >>> has_renormed_embeddings(torch.nn.Embedding(2, 2, max_norm=1.0)), has_renormed_embeddings(torch.nn.Linear(2, 2))
    (True, False)
    """
    return any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.max_norm is not None
               for m in model.modules())


def renormed_copies(model: torch.nn.Module, tensors: dict) -> dict:
    """``tensors`` with a copy (``clone``, differentiable) of each embedding weight that a
    ``max_norm`` renormalises in place in the forward: the tensor given for it, or the model's
    own parameter where none is (under the name ``tensors`` holds it by, where it is tied).

    >>> model = torch.nn.Embedding(2, 2, max_norm=1.0)
    >>> weight = torch.full((2, 2), 3.0)
    >>> copies = renormed_copies(model, {"weight": weight})
    >>> copies["weight"] is weight, torch.equal(copies["weight"], weight)
    (False, True)
    """
    embeddings = [m for m in model.modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.max_norm is not None]
    if not embeddings:
        return tensors
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    out = dict(tensors)
    for module in embeddings:
        aliases = names.get(id(module.weight), [])
        given = [n for n in aliases if n in tensors]
        if given:
            out[given[0]] = tensors[given[0]].clone()
        elif aliases:
            out[aliases[0]] = module.weight.clone()
    return out


def functional_call(model: torch.nn.Module, tensors: dict, args, *, renormed: bool | None = None):
    """``torch.func.functional_call(model, tensors, args)``, the model's own parameters and
    buffers in place afterwards (:func:`slots_kept`), and an embedding weight that ``max_norm``
    renormalises passed as a copy (:func:`renormed_copies`; ``renormed``: whether the model has one,
    :func:`has_renormed_embeddings`, when the caller asked once; None: look here).

    >>> inner = torch.nn.Linear(1, 1, bias=False)
    >>> model = torch.nn.Sequential(inner, inner)
    >>> weight = inner.weight
    >>> functional_call(model, {"0.weight": torch.full((1, 1), 2.0)}, (torch.ones(1, 1),))
    tensor([[4.]])
    >>> inner.weight is weight
    True
    """
    with slots_kept(model), parametrizations_uncached():
        if renormed is None or renormed:   # renormed: has_renormed_embeddings(model), asked once by the caller
            tensors = renormed_copies(model, tensors)
        return torch.func.functional_call(model, tensors, args)


def functional_loss(model: torch.nn.Module, tensors: dict, inputs, loss_fn, targets, *,
                    renormed: bool | None = None, then=None):
    """``loss_fn(model(inputs), targets)`` with ``model`` holding ``tensors`` (as
    :func:`functional_call`, tied weights alike) through both calls, so a ``loss_fn`` that reads
    ``model``'s parameters (``model.emb.weight``) reads the tensors given for them. ``then(loss)``,
    where given, runs while the model still holds them (a backward: ``torch.utils.checkpoint``
    without reentrancy recomputes its block there, from the module's parameters at that time).

    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> loss_fn = lambda out, y: (out * model.weight).sum()   # reads the weight itself
    >>> w = torch.full((1, 1), 2.0, requires_grad=True)
    >>> loss = functional_loss(model, {"weight": w}, torch.ones(1, 1), loss_fn, None)
    >>> torch.autograd.grad(loss, w)[0]     # d(w^2)/dw = 2w
    tensor([[4.]])
    """
    def body():
        loss = loss_fn(model(inputs), targets)
        if then is not None:
            then(loss)
        return loss

    with slots_kept(model), parametrizations_uncached():
        if renormed is None or renormed:
            tensors = renormed_copies(model, tensors)
        return holding(Holder(model), tensors, body)


class Holder(torch.nn.Module):
    """A module whose one child is ``model`` and whose forward is ``body()``: through it
    :func:`torch.func.functional_call` (public) keeps the given tensors in ``model`` for the whole
    of ``body``, the loss and a backward included, not for ``model``'s forward alone
    (:func:`holding`).

    >>> Holder(torch.nn.Linear(1, 1))(lambda: 3)
    3
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, body):
        return body()


def holding(holder: Holder, tensors: dict, body):
    """``body()`` with ``holder.model`` holding ``tensors`` (names as in ``model.named_parameters()``
    and ``named_buffers()``; tied weights follow the name given), by
    :func:`torch.func.functional_call` on ``holder`` (:class:`Holder`).

    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> holding(Holder(model), {"weight": torch.full((1, 1), 5.0)}, lambda: model.weight.item())
    5.0
    >>> model.weight.item() == 5.0
    False
    """
    return torch.func.functional_call(holder, {f"model.{name}": t for name, t in tensors.items()}, (body,))
