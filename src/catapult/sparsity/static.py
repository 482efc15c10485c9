"""Static random unstructured sparsity (dynamic masks: :mod:`catapult.sparsity.dynamic`) for hidden projections (SμPar's setting).

A sparse layer keeps a dense weight ``W`` and a fixed 0/1 mask ``M`` of the same shape and
computes ``y = x (W ⊙ M)^T + b``. Because the forward pass only ever sees ``W ⊙ M``:

* the gradient of the loss w.r.t. ``W`` is zero wherever ``M == 0``;
* the weight itself is also multiplied by ``M`` once at construction, so the pruned entries
  are exactly 0 in ``W``. Any optimizer whose update of a zero-gradient, zero-valued entry is
  zero (SGD with or without momentum, Adam, AdamW -- decoupled decay of 0 is 0 --, GI-Adam)
  therefore keeps them at 0 forever, and ``W`` can be exported as-is.

The mask is a registered (persistent) buffer: it is saved by ``state_dict()``, restored
exactly by ``load_state_dict()``, copied by ``copy.deepcopy`` and seen by ``torch.compile`` as
an ordinary tensor. (The reference SμPar code re-samples masks on rebuild and does not save
them; here a checkpoint restores the very same sparse network.)

Mask sampling, for a matrix with ``n`` entries and density ``rho = 1 - sparsity``:

* ``method="exact"`` (default): exactly ``k = max(1, floor(rho * n + 1/2))`` nonzeros (``rho*n``
  rounded half up), placed at the first ``k`` positions of a random permutation of the ``n``
  entries (``torch.randperm`` with the given generator). Every matrix has the same density,
  so width/density sweeps are not blurred by sampling noise.
* ``method="bernoulli"``: each entry is kept independently with probability ``rho``
  (the reference code's choice; the count is Binomial(n, rho)).
"""
from __future__ import annotations

import math
import weakref
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from catapult.arguments import check_flag, check_real
from catapult.compiled_state import retrace_compiled

__all__ = [
    "MASK_METHODS",
    "random_mask",
    "exact_nonzeros",
    "keeps_no_entry",
    "kept_density",
    "MaskedLinear",
    "sparsify_",
    "masked_modules",
    "model_density",
]

MASK_METHODS = ("exact", "bernoulli")


def _check_density(owner: str, density: float) -> float:
    # float(density) took True as 1.0 (a dense layer) and "0.1" as 0.1; MaskedLinear(density=True) then
    # failed in torch's words
    return check_real(owner, "density", density, low=0.0, high=1.0, low_open=True)


def exact_nonzeros(numel: int, density: float) -> int:
    """Number of kept entries of an exact-density mask: ``max(1, floor(density * numel + 1/2))``."""
    density = _check_density("exact_nonzeros", density)
    return max(1, min(numel, int(math.floor(density * numel + 0.5))))


def keeps_no_entry(numel: int, density: float) -> bool:
    """Whether ``density * numel`` rounds to no entry (below 1/2), where :func:`exact_nonzeros`'
    floor of 1 would keep one, a density of ``1 / numel`` rather than ``density``: the one rule
    :func:`random_mask`, ``parametrize()`` and gmp's ``final_density`` refuse by (the config
    checks, which import no other catapult package, write it as ``density * numel < 0.5`` too).

    Example:
        >>> keeps_no_entry(256, 0.001), keeps_no_entry(256, 0.002), keeps_no_entry(256, 1.0)
        (True, False, False)
    """
    return density < 1.0 and math.floor(density * numel + 0.5) == 0


def kept_density(numel: int, density: float, *, parts: int = 1, method: str = "exact") -> float:
    """The density a mask of ``density`` keeps in a matrix of ``numel`` entries drawn as ``parts``
    equal row blocks (Q, K and V of a fused projection): ``exact_nonzeros(numel / parts, density) *
    parts / numel`` for ``method="exact"`` (the count every such mask has, and the one GMP prunes
    to), ``density`` for ``"bernoulli"`` (its expectation; the count is random). SμPar's
    corrections of a hidden matrix use it: the rows' mean number of live inputs, the forward's
    fan-in, is ``kept_density * fan_in``, and the count rounds (``round(0.03125 * 81) = 3`` keeps
    ``3 / 81 = 0.037``, 18.5% more than asked).

    Example:
        >>> kept_density(81, 0.03125), kept_density(81, 0.03125, method="bernoulli"), kept_density(4096, 0.25)
        (0.037037037037037035, 0.03125, 0.25)
    """
    density = _check_density("kept_density", density)
    if density == 1.0:
        return density
    if method not in MASK_METHODS:
        raise ValueError(f"mask method must be one of {MASK_METHODS}; got {method!r}")
    if method == "bernoulli":
        return density
    part = numel // parts
    return exact_nonzeros(part, density) * parts / numel


def random_mask(
    shape: tuple[int, ...] | torch.Size,
    density: float,
    *,
    method: str = "exact",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random boolean mask of ``shape`` with the given density (fraction of ``True`` entries).

    ``method="exact"``: exactly :func:`exact_nonzeros` ``(numel, density)`` entries are ``True``
    (first entries of a ``torch.randperm`` permutation). ``method="bernoulli"``: i.i.d.
    ``Bernoulli(density)`` entries. Under either, a density whose count ``density * numel`` rounds to 0
    is a ValueError (an exact mask would keep one entry, a density of ``1 / numel``; a Bernoulli mask
    mostly none). ``density == 1`` gives an all-``True`` mask without drawing
    random numbers. Sampling happens on the CPU with ``generator`` (or the global CPU RNG), so a
    seed gives the same mask on every device.

    Example:
        >>> int(random_mask((4, 8), 0.25, generator=torch.Generator().manual_seed(0)).sum())
        8
        >>> random_mask((4, 8), 0.01)
        Traceback (most recent call last):
        ...
        ValueError: random_mask: density 0.01 keeps round(0.01 * 32) = 0 of the 32 entries of a (4, 8) mask (it would keep 1: density 0.0312, not 0.01); use a density >= 0.0156 or a larger matrix
    """
    density = _check_density("random_mask", density)
    if method not in MASK_METHODS:
        raise ValueError(f"mask method must be one of {MASK_METHODS}; got {method!r}")
    shape = torch.Size(shape)
    numel = shape.numel()
    if keeps_no_entry(numel, density):
        # exact: exact_nonzeros' floor of 1, the mask was 1/numel dense, not density; bernoulli: a mask that
        # mostly keeps nothing (density 1e-30 of a 4x4: every weight pruned, SμPar's lr_mult 1e30), which the
        # config and parametrize() refused at the same count and MLP / GPT / MaskedLinear built silently
        would = (f"it would keep 1: density {1 / numel:.3g}, not {density:g}" if method == "exact" else
                 f"a Bernoulli mask would keep none with probability {(1 - density) ** numel:.3g}")
        raise ValueError(f"random_mask: density {density:g} keeps round({density:g} * {numel}) = 0 of the "
                         f"{numel} entries of a {tuple(shape)} mask ({would}); use a density >= "
                         f"{0.5 / numel:.3g} or a larger matrix")
    if density == 1.0:
        mask = torch.ones(shape, dtype=torch.bool)
    elif method == "exact":
        keep = exact_nonzeros(numel, density)
        order = torch.randperm(numel, generator=generator)
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[order[:keep]] = True
        mask = mask.view(shape)
    else:
        mask = torch.rand(shape, generator=generator) < density
    return mask.to(device) if device is not None else mask


def _weakly(layer: nn.Module, method: str):
    """A hook calling ``layer.<method>`` while the layer lives. A bound method stored in its own
    weight's hooks made a cycle through the tensor that the garbage collector cannot see, so
    every capturing layer (each RigL model, each sweep cell) stayed alive."""
    ref = weakref.ref(layer)

    def hook(tensor):
        owner = ref()
        if owner is not None:
            getattr(owner, method)(tensor)
    return hook


#: Whether torch names the running backward pass (private since torch 2.1; see :func:`_backward_id`).
_TASK_IDS = getattr(torch._C, "_current_graph_task_id", None) is not None


def _backward_id() -> int:
    """The autograd graph task running now (one per ``backward()`` / ``autograd.grad`` call;
    -1 outside one). Private in torch since 2.1; where it is missing every backward reads 0 and
    only the weight's identity is checked."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return 0 if current is None else current()


class MaskedLinear(nn.Linear):
    """``nn.Linear`` with a fixed sparsity mask: ``y = x (W ⊙ M)^T + b``.

    ``mask`` is a persistent boolean buffer of the weight's shape, or ``None`` for a dense
    layer (then this is exactly ``nn.Linear``). Construct it directly (``density`` < 1 samples
    a mask with :func:`random_mask`) or convert an existing ``nn.Linear`` in place with
    :func:`sparsify_`. The weight is multiplied by the mask when the mask is set, so pruned
    entries are 0 in the parameter itself, and get zero gradient because the forward pass
    uses ``W ⊙ M``.
    """

    mask: torch.Tensor | None
    #: RigL's grow score ``dL/d(W ⊙ M)`` (the weight's own gradient is that times ``M``, zero
    #: where pruned), kept by :attr:`capture_dense_grad`.
    dense_grad: torch.Tensor | None = None
    _capture = False
    _pending_dense_grad: torch.Tensor | None = None  # of the latest backward through a forward
    _pending_backward: int = -1                       # the autograd graph task that computed it
    _pending_adds: torch.Tensor | None = None         # .grad held a gradient before it: accumulate
    _score_open = True  # dense_grad may still be added to: False once a MaskUpdater step has used it

    @property
    def capture_dense_grad(self) -> bool:
        """Keep ``dL/d(W ⊙ M)`` in :attr:`dense_grad`, from the backward passes that accumulate
        into the weight's ``.grad`` (``loss.backward()``), summed as ``.grad`` is: over the uses of
        the layer in one graph, and over passes until ``.grad`` is zeroed (micro-batches before one
        optimizer step); a pass onto a ``None`` or all-zero ``.grad`` starts afresh, and so does the first
        pass after a :meth:`MaskUpdater.step <catapult.sparsity.MaskUpdater.step>` (the optimizer step
        is over: a ``.grad`` made non-zero since by a backward that bypassed this forward, e.g. a
        penalty on the weight alone, does not carry the last step's score over). Passes that differentiate
        without accumulating there (``torch.autograd.grad``, ``torch.func``: the sharpness and
        spectrum measurements, the critical-lr search) leave it alone, so measuring between
        ``backward()`` and a RigL update does not change what RigL grows. Off unless a
        :class:`~catapult.sparsity.MaskUpdater` for RigL turns it on."""
        return self._capture

    @capture_dense_grad.setter
    def capture_dense_grad(self, on: bool) -> None:
        self._capture = check_flag(type(self).__name__, "capture_dense_grad", on)  # "no" captured
        self._hook_accumulation()

    def _hook_accumulation(self) -> None:
        # Its weak references are no graph (under train.compile dynamo failed on them): a traced
        # call runs it outside the graph. Only then is dynamo touched: ``torch.compiler.disable``
        # as a decorator imported dynamo and sympy with this module (1.5 s of every ``import
        # catapult``), and wrapping at the first call still imported them, and made inductor's
        # cache folder in the temp directory, at a RigL run's first step
        if _compiling():
            return _hook_accumulation_untraced(self)
        self._hook_weights()

    def _hook_weights(self) -> None:
        """Hook the weight Parameter in use, once each: the one of the updater's day and any
        that replaced it since (a ``load_state_dict(assign=True)`` resume, ``layer.weight =
        nn.Parameter(...)``, a weight unfrozen, a Parameter substituted by
        ``torch.func.functional_call``). None is unhooked while capture is on: a Parameter
        substituted for one forward must not take the hook off the real weight, whose backward
        may still come. A hook accepts only a backward into the layer's weight of the moment
        (:meth:`_accept_dense_grad`). The hooks hold the layer, and this list the weights,
        weakly (by identity: one lookup per forward, however many Parameters were substituted).
        Capture off removes them all."""
        hooks = self.__dict__.get("_accumulate_hooks")
        if not self._capture:
            for handle in list((hooks or {}).values()):
                handle.remove()
            self.__dict__.pop("_accumulate_hooks", None)
            return
        if hooks is None:
            hooks = self.__dict__["_accumulate_hooks"] = WeakIdKeyDictionary()  # a plain attribute: no module state
        weight = self.weight
        if isinstance(weight, nn.Parameter) and weight.requires_grad and weight not in hooks:
            if not len(hooks):
                self._pending_dense_grad = None
            hooks[weight] = weight.register_post_accumulate_grad_hook(_weakly(self, "_accept_dense_grad"))

    def _accept_dense_grad(self, weight: torch.Tensor) -> None:
        # only a backward into this layer's own weight: another layer's Parameter, substituted
        # here through functional_call, keeps this hook, and its backward took a stale score
        # ... and only the score of this very backward: one through a forward whose score was
        # left pending (a torch.autograd.grad) is not this one's, e.g. a penalty on the weight alone
        if (self._pending_dense_grad is not None and weight is self.weight
                and self._pending_backward == _backward_id()):
            pending, adds = self._pending_dense_grad, self._pending_adds
            if (adds is not None and self.dense_grad is not None and self._score_open
                    and self.dense_grad.shape == pending.shape):
                # .grad accumulates over backward passes (micro-batches) until zero_grad: so does the score
                pending = pending + torch.where(adds, self.dense_grad, torch.zeros_like(self.dense_grad))
            self.dense_grad, self._pending_dense_grad, self._pending_adds = pending, None, None
            self._score_open = True

    def _apply(self, fn, recurse: bool = True):
        # .to(), .double(), .cuda(): with parameter swapping on (torch.__future__'s
        # set_swap_module_params_on_conversion, or a tensor subclass) torch.utils.swap_tensors
        # refuses a weight that the hook table refers to weakly, and a swapped weight keeps no
        # hook. So unhook, convert, and hook the converted weight; the kept score converts too.
        capture = self._capture
        if capture:
            self.capture_dense_grad = False
        try:
            out = super()._apply(fn, recurse)
            if self.dense_grad is not None:
                self.dense_grad = fn(self.dense_grad)
            return out
        finally:
            if capture:
                # a swap leaves the weight's (now empty) Python table of accumulate hooks but
                # not its registration in autograd, which torch adds only with a new table
                weight = self.weight
                if isinstance(weight, torch.Tensor) and getattr(weight, "_post_accumulate_grad_hooks", None) == {}:
                    weight._post_accumulate_grad_hooks = None
                self.capture_dense_grad = True

    def __getstate__(self) -> dict:
        state = super().__getstate__()   # a copy; the hook is the old weight's
        for key in ("_accumulate_hooks", "_pending_dense_grad", "_pending_backward", "_pending_adds"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        older = state.pop("capture_dense_grad", None)  # pickled before it was a property
        super().__setstate__(state)      # copy.deepcopy, unpickling: hook the new weight
        if older is not None:
            self._capture = bool(older)
        if self._capture:
            self._hook_accumulation()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        density: float = 1.0,
        mask_method: str = "exact",
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ) -> None:
        bias = check_flag(type(self).__name__, "bias", bias)  # bias="no" built a bias, as nn.Linear does
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("mask", None)
        density = _check_density(type(self).__name__, density)
        if density < 1.0:
            self.set_mask(random_mask(self.weight.shape, density, method=mask_method,
                                      generator=generator))

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Install a copy of ``mask`` (bool, weight-shaped; ``None`` = dense) and zero the pruned
        weights. A copy: :class:`~catapult.sparsity.MaskUpdater` writes a layer's mask in place, and
        the caller's tensor (one mask given to the layers of two models, each with its updater)
        was that layer's, so one model's RigL/GMP update changed the other's mask and the caller's.
        Code compiled before that keeps the old mask on torch 2.2 unless traced again
        (:func:`catapult.compiled_state.retrace_compiled`, called here)."""
        if mask is None:
            self.mask = None
            retrace_compiled()   # torch 2.2.2: a compiled forward kept multiplying by the old mask
            return
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match weight shape "
                f"{tuple(self.weight.shape)}"
            )
        self.mask = mask.to(device=self.weight.device, dtype=torch.bool, copy=True)
        # torch 2.2.2: a model compiled before took its gradient through the old mask (grown
        # weights none, dropped ones some), until its compiled code is traced again
        retrace_compiled()
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned entries of the weight in place (``W <- W ⊙ M``); no-op when dense."""
        if self.mask is not None:
            self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        """``W ⊙ M`` (or ``W`` when dense): the matrix the forward pass uses."""
        return self.weight if self.mask is None else self.weight * self.mask

    def forward_weight(self) -> torch.Tensor:
        """:meth:`masked_weight` for a forward pass: with ``capture_dense_grad`` its gradient is
        kept in ``dense_grad`` by a backward pass that accumulates into ``.grad``. Every subclass's forward goes through it."""
        weight = self.masked_weight()
        if self.capture_dense_grad and self.mask is not None and weight.requires_grad:
            self._hook_accumulation()  # a no-op unless the weight Parameter changed
            weight.register_hook(_weakly(self, "_keep_dense_grad"))
        return weight

    @property
    def density(self) -> float:
        """Fraction of kept entries (1.0 when dense)."""
        if self.mask is None:
            return 1.0
        return float(self.mask.sum()) / self.mask.numel()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.forward_weight(), self.bias)

    def _keep_dense_grad(self, grad: torch.Tensor) -> None:
        # every backward through this forward; the weight's accumulate hook accepts it
        current = _backward_id()
        if self._pending_dense_grad is not None and self._pending_backward == current and _TASK_IDS:
            # one more use of the layer in this graph (a layer applied twice): autograd sums
            # the weight's gradient over the uses, and the score sums the same way
            self._pending_dense_grad = self._pending_dense_grad + grad.detach()
            return
        held = self.weight.grad
        # a tensor test, not a host sync: set_to_none=False leaves zeros, which hold nothing
        self._pending_adds = None if held is None else held.ne(0).any()
        self._pending_dense_grad, self._pending_backward = grad.detach(), current

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.mask is None else f"{text}, density={self.density:.4g}"


def sparsify_(
    linear: nn.Linear,
    density: float,
    *,
    method: str = "exact",
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> MaskedLinear:
    """Make ``linear`` sparse **in place** and return it (now a :class:`MaskedLinear`).

    The module object keeps its identity, its parameters (so optimizers and tied references
    stay valid) and its ``state_dict`` keys (``weight``, ``bias``), gaining a ``mask`` buffer.
    Only plain ``nn.Linear`` (or an existing ``MaskedLinear`` subclass instance) can be
    converted, because a subclass's own ``forward`` would be lost. Pass ``mask`` to install a
    given mask instead of sampling one.
    """
    if mask is None:  # before the layer changes class: a refused density leaves it as it was
        density = _check_density("sparsify_", density)
    if not isinstance(linear, MaskedLinear):
        if type(linear) is not nn.Linear:
            raise TypeError(
                f"sparsify_ converts plain nn.Linear layers only; got {type(linear).__name__}"
            )
        linear.__class__ = MaskedLinear  # same object, same parameters, new forward
        linear.register_buffer("mask", None)
    if mask is None:
        mask = random_mask(linear.weight.shape, density, method=method, generator=generator)
    linear.set_mask(mask)
    return linear


def masked_modules(model: nn.Module) -> Iterator[tuple[str, MaskedLinear]]:
    """``(name, module)`` for every :class:`MaskedLinear` of ``model`` that has a mask."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedLinear) and module.mask is not None:
            yield name, module


def model_density(model: nn.Module) -> float:
    """Kept fraction over all masked matrices of ``model`` (1.0 if none are masked)."""
    kept = total = 0
    for _, module in masked_modules(model):
        kept += int(module.mask.sum())
        total += module.mask.numel()
    return 1.0 if total == 0 else kept / total


# torch's lazy form of ``torch.compiler.disable`` (dynamo imported at its first call, which only a
# traced forward makes)
_hook_accumulation_untraced = torch._disable_dynamo(lambda layer: layer._hook_weights())


def _compiling() -> bool:
    """Whether dynamo is tracing this call: ``torch.compiler.is_compiling`` (torch >= 2.3), else
    ``torch._utils.is_compiling``, which torch 2.2's dynamo answers alike (an AttributeError at a
    RigL layer's first ``capture_dense_grad`` before)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return is_compiling() if is_compiling is not None else torch._utils.is_compiling()
