"""Dynamic sparsity: masks that change during training (SμPar paper, Fig. 12).

Two rules update the masks of a model's :class:`~catapult.sparsity.MaskedLinear` layers after
the optimizer step of selected steps ``t`` (``t > 0``, ``t % update_every == 0``):

* **RigL** (Evci et al., 2020), for ``t < T_end``: with drop fraction
  ``f_t = (alpha / 2) (1 + cos(pi t / T_end))`` (cosine decay from ``alpha``) and, per mask part,
  ``k = floor(f_t * n_active)``:
  drop the ``k`` active weights of smallest ``|W|``, then grow the ``k`` inactive weights (the
  just-dropped ones included) of largest dense gradient ``|dL/d(W ⊙ M)|`` of the step's batch.
  The count of active weights never changes, so the density is kept exactly.
* **GMP**, gradual magnitude pruning (Zhu & Gupta, 2017), for ``t_0 <= t <= T_end``: the
  density target ``d_t = d_f + (d_0 - d_f) (1 - (t - t_0) / (T_end - t_0))^3`` (cubic, from
  ``d_0 = 1`` down to the final ``d_f``); per mask part the active weights of smallest ``|W|``
  are pruned until ``exact_nonzeros(numel, d_t)`` remain. Nothing regrows; at ``T_end`` the
  density is exactly ``d_f``'s static count.

A *mask part* is a block of rows with its own exact count: the whole matrix, or each of Q, K
and V of a fused attention projection (``module.catapult_mask_parts = 3``), as the static
masks do.

Tied weights: layers that share one weight Parameter (and so one mask, as
:func:`catapult.parametrize` gives them) are updated as one matrix: RigL's grow score is the sum
of their dense gradients (as the weight's ``.grad`` sums their uses), and every layer of the tie
gets the one new mask. Tied layers with different masks are refused.

Optimizer state. A grown weight starts at 0 and so does every per-entry optimizer state of
its position (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``: any state
tensor of the weight's shape), as RigL's reference code resets them; a dropped weight is set to 0
with its state zeroed too, so that a leftover momentum cannot move it. The per-parameter step
count is kept (Adam's bias correction then treats a grown entry like one whose moments decayed
to 0: its first step is ``lr (1 - b1) / sqrt(1 - b2)``, about ``3.2 lr``, once ``b^t`` is
small). An optimizer that starts an entry's second moment from its first gradient (GI-Adam:
``v_0 = init(g)``) starts a grown entry's from the dense gradient RigL grew it by (its
``start_entries_`` method): a zero ``v`` there gave GI-Adam's grown weights Adam's large first
step (an MLP at step 200: 1.35 lr against the kept weights' 0.44 lr; 3.16 lr against 0.18 lr
without the ``v`` correction). After *every*
optimizer step the updater re-applies the masks (``W <- W ⊙ M``), so a masked weight is exactly
0 under any optimizer, including ones with decoupled weight decay or leftover moments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from catapult.arguments import MAX_STEPS, check_integer, check_real
from catapult.compiled_state import retrace_compiled
from catapult.sparsity.static import MaskedLinear, exact_nonzeros, keeps_no_entry, masked_modules

__all__ = ["DYNAMIC_METHODS", "rigl_drop_fraction", "gmp_density", "MaskUpdater", "rigl_update", "prune_to",
           "reset_state_"]

#: ``model.sparsity.method`` values: ``static`` (masks fixed at init) and the dynamic rules.
DYNAMIC_METHODS = ("static", "rigl", "gmp")


def rigl_drop_fraction(t: int, alpha: float, end_step: int) -> float:
    """``(alpha / 2) (1 + cos(pi t / T_end))`` for ``t < T_end``, else 0.

    >>> rigl_drop_fraction(0, 0.3, 100), rigl_drop_fraction(50, 0.3, 100), rigl_drop_fraction(100, 0.3, 100)
    (0.3, 0.15, 0.0)
    """
    # alpha=nan, -0.3 or True (as 1.0) gave a fraction that rigl_update refused, or ran, only at the first update
    alpha = check_real("rigl_drop_fraction", "alpha", alpha, low=0.0, high=1.0)
    if t >= end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * t / end_step))


def gmp_density(t: int, final_density: float, start_step: int, end_step: int,
                initial_density: float = 1.0) -> float:
    """``d_f + (d_0 - d_f) (1 - (t - t_0) / (T_end - t_0))^3``, clamped to ``[t_0, T_end]``.

    >>> gmp_density(0, 0.1, 0, 10), gmp_density(10, 0.1, 0, 10), round(gmp_density(5, 0.1, 0, 10), 4)
    (1.0, 0.1, 0.2125)
    """
    # nan, inf, True (as 1.0) and densities outside (0, 1] gave such a density back, silently
    final_density = check_real("gmp_density", "final_density", final_density, low=0.0, high=1.0, low_open=True)
    initial_density = check_real("gmp_density", "initial_density", initial_density, low=0.0, high=1.0, low_open=True)
    if end_step <= start_step:
        return final_density if t >= end_step else initial_density
    progress = min(1.0, max(0.0, (t - start_step) / (end_step - start_step)))
    return final_density + (initial_density - final_density) * (1.0 - progress) ** 3


def _parts(module: MaskedLinear) -> int:
    return int(getattr(module, "catapult_mask_parts", 1))


def _row_blocks(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``tensor`` split into ``parts`` equal row blocks (views), each flattened."""
    return [block.reshape(-1) for block in tensor.chunk(parts, dim=0)]


def rigl_update(weight: torch.Tensor, mask: torch.Tensor, dense_grad: torch.Tensor,
                fraction: float) -> torch.Tensor:
    """One RigL step on one flat mask part: the new mask (same count of ``True``).

    Drop the ``k = floor(fraction * n_active)`` active entries of smallest ``|weight|``, then
    grow the ``k`` inactive entries (after the drop) of largest ``|dense_grad|``. Ties break
    by index order of ``torch.topk``."""
    # 1.5 dropped the active entries and as many inactive ones, then grew them all: the count rose
    fraction = check_real("rigl_update", "fraction", fraction, low=0.0, high=1.0)
    if not (weight.shape == mask.shape == dense_grad.shape):
        raise ValueError(f"rigl_update: weight {tuple(weight.shape)}, mask {tuple(mask.shape)} and dense_grad "
                         f"{tuple(dense_grad.shape)} must have one shape")
    active = int(mask.sum())
    k = int(math.floor(fraction * active))
    if k == 0 or active == mask.numel():
        return mask.clone()
    inf = torch.tensor(math.inf, dtype=weight.dtype, device=weight.device)
    keep_score = torch.where(mask, weight.abs(), inf)          # smallest k active are dropped
    drop = torch.topk(keep_score, k, largest=False).indices
    new = mask.clone()
    new[drop] = False
    grow_score = torch.where(new, -inf, dense_grad.abs().to(weight.dtype))
    grow = torch.topk(grow_score, k, largest=True).indices
    new[grow] = True
    return new


def prune_to(weight: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """The mask with only the ``keep`` active entries of largest ``|weight|`` (if more are active)."""
    if int(mask.sum()) <= keep:
        return mask.clone()
    score = torch.where(mask, weight.abs(), torch.tensor(-math.inf, dtype=weight.dtype, device=weight.device))
    new = torch.zeros_like(mask)
    new[torch.topk(score, keep, largest=True).indices] = True
    return new


@dataclass
class _Layer:
    name: str
    module: MaskedLinear


class MaskUpdater:
    """Updates the masks of ``model`` by ``method`` (module docstring); call :meth:`step` after
    every ``optimizer.step()`` with the step index ``t`` that update belonged to.

    Args:
        method: ``"static"`` (only re-applies masks), ``"rigl"`` or ``"gmp"``.
        final_density: GMP's ``d_f`` (RigL keeps the masks' initial counts).
        update_every: ``ΔT`` steps between mask updates (GMP also updates at ``T_end``, so that
            it always ends at ``d_f``, also where ``T_end`` is no multiple of ``ΔT``).
        end_step: ``T_end``: no update at ``t >= T_end`` (RigL) / ``t > T_end`` (GMP); needed
            by both (a schedule in which no mask would change is refused: RigL's ``update_every
            >= T_end``, GMP's ``t_0 > T_end`` or ``final_density`` 1).
        drop_fraction: RigL's ``alpha``. start_step: GMP's ``t_0``.
    RigL needs dense gradients: the updater turns on ``capture_dense_grad`` of every masked
    layer (the layer keeps ``dL/d(W ⊙ M)`` of the ``loss.backward()`` calls since the last
    ``zero_grad``, summed as ``.grad`` is, in ``dense_grad``;
    curvature measurements and critical-lr searches in between do not replace it).
    """

    def __init__(self, model: nn.Module, method: str = "static", *, final_density: float = 1.0,
                 update_every: int = 100, end_step: int | None = None, drop_fraction: float = 0.3,
                 start_step: int = 0) -> None:
        if method not in DYNAMIC_METHODS:
            raise ValueError(f"sparsity method must be one of {DYNAMIC_METHODS}; got {method!r}")
        # 1.5 was step 1; NumPy integers are steps, as counts are elsewhere
        # steps, bounded as train.steps is (MAX_STEPS): update_every=1e26 was "never"
        update_every = check_integer("MaskUpdater", "update_every", update_every, high=MAX_STEPS)
        start_step = check_integer("MaskUpdater", "start_step", start_step, low=0, high=MAX_STEPS)
        end_step = check_integer("MaskUpdater", "end_step", end_step, low=0, high=MAX_STEPS, optional=True)
        # a drop fraction above 1 grew more weights than it dropped: the density changed
        final_density = check_real("MaskUpdater", "final_density", final_density, low=0.0, high=1.0, low_open=True)
        drop_fraction = check_real("MaskUpdater", "drop_fraction", drop_fraction, low=0.0, high=1.0, low_open=True)
        if method != "static":
            _check_schedule(method, final_density, update_every, end_step, start_step)
        self.method, self.final_density = method, float(final_density)
        self.update_every, self.end_step = int(update_every), int(end_step or 0)
        self.drop_fraction, self.start_step = float(drop_fraction), int(start_step)
        self.layers = [_Layer(n, m) for n, m in masked_modules(model)]
        if method != "static" and not self.layers:
            # it updated nothing: the model trained dense (gmp) or with whatever it had (rigl)
            raise ValueError(f"{method} updates the masks of MaskedLinear layers, and the model has none with a "
                             "mask; sparsify_ its hidden Linear layers first (gmp prunes from dense: "
                             "sparsify_(layer, 1.0) gives an all-ones mask)")
        if method == "gmp":
            for layer in self.layers:   # exact_nonzeros' floor kept 1 weight: another density than final_density
                part = layer.module.weight.numel() // _parts(layer.module)
                if keeps_no_entry(part, final_density):
                    raise ValueError(f"gmp final_density {final_density:g} keeps round({final_density:g} * {part}) = 0 "
                                     f"weights of {layer.name!r} ({tuple(layer.module.weight.shape)}"
                                     f"{f', each of {_parts(layer.module)} parts' if _parts(layer.module) > 1 else ''}); "
                                     f"it would keep 1 (density {1 / part:.3g}): use final_density >= {0.5 / part:.3g}")
        if method != "gmp":
            _check_pruned(self.layers, method)
        # tied layers with different masks: refused now, not at the first update; and each tie's one
        # mask its own before any forward (a compiled one included) reads it
        _own_masks(_ties(self.layers))
        self.updates = 0
        for layer in self.layers:
            layer.module.capture_dense_grad = method == "rigl"

    def is_update_step(self, t: int) -> bool:
        """Whether the masks change after step ``t``'s optimizer update."""
        if self.method == "static" or t <= 0:
            return False
        if self.method == "gmp" and t == self.end_step >= self.start_step:
            return True  # GMP's last step prunes to d_f whatever update_every, or it never gets there
        if t % self.update_every:
            return False
        if self.method == "rigl":
            return t < self.end_step
        return self.start_step <= t <= self.end_step

    def density_at(self, t: int) -> float | None:
        """GMP's target density after step ``t`` (None for other methods)."""
        if self.method != "gmp":
            return None
        return gmp_density(t, self.final_density, self.start_step, self.end_step)

    @torch.no_grad()
    def step(self, t: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """After update ``t``: change the masks if ``t`` is an update step (resetting the
        optimizer state of every entry that changed), then re-apply all masks. True if masks changed."""
        changed_any = False
        if self.is_update_step(t):
            ties = _ties(self.layers)  # of the weights in use now (a load_state_dict(assign=True) unties them)
            _own_masks(ties)           # a no-op unless a mask was replaced or shared since
            # every new mask, and the optimizer's refusal of any (GIAdam: a grown entry's v_0 beyond
            # float16), before the first mask, weight or state changes: a refusal left them half updated
            plans = [plan for plan in (self._new_mask(tie, t) for tie in ties) if plan is not None]
            check = getattr(optimizer, "check_start_entries", None) if self.method == "rigl" else None
            for module, new_mask, grad in plans if callable(check) else ():
                check(module.weight, new_mask & ~module.mask, grad)
            for module, new_mask, grad in plans:
                _apply_mask(module, new_mask, grad, optimizer)
            changed_any = bool(plans)
            self.updates += 1
        for layer in self.layers:
            layer.module.apply_mask_()
            layer.module._score_open = False  # the next step's score starts afresh
        return changed_any

    def _new_mask(self, tie: list[_Layer], t: int) -> tuple[MaskedLinear, torch.Tensor, torch.Tensor | None] | None:
        """``(module, new mask, RigL's dense gradient or None)`` of one weight, shared by the layers
        of ``tie`` (usually one); None where the mask stays. Changes nothing."""
        module = tie[0].module
        parts = _parts(module)
        weight, mask = module.weight.detach(), module.mask
        new_mask = mask.clone(memory_format=torch.contiguous_format)  # written through row-block views below
        if self.method == "rigl":
            grads = [g for g in (getattr(layer.module, "dense_grad", None) for layer in tie) if g is not None]
            if not grads:
                frozen = "" if module.weight.requires_grad else " (its weight is frozen: requires_grad=False)"
                raise RuntimeError(f"RigL grows {tie[0].name!r} ({module!r}) by its dense gradient, and no "
                                   f"loss.backward() through its forward has reached its weight{frozen}: call "
                                   "step() after backward()")
            grad = grads[0] if len(grads) == 1 else torch.stack(grads).sum(0)  # a tied weight's uses, summed
            fraction = rigl_drop_fraction(t, self.drop_fraction, self.end_step)
            for w, m, g, out in zip(_row_blocks(weight, parts), _row_blocks(mask, parts),
                                    _row_blocks(grad, parts), _row_blocks(new_mask, parts)):
                out.copy_(rigl_update(w, m, g, fraction))
        else:
            grad = None
            density = self.density_at(t)
            for w, m, out in zip(_row_blocks(weight, parts), _row_blocks(mask, parts), _row_blocks(new_mask, parts)):
                out.copy_(prune_to(w, m, exact_nonzeros(m.numel(), density)))
        return (module, new_mask, grad) if bool((new_mask != mask).any()) else None

    def densities(self) -> Iterator[tuple[str, float]]:
        """``(layer name, density)`` of every masked layer."""
        for layer in self.layers:
            yield layer.name, layer.module.density


def _apply_mask(module: MaskedLinear, new_mask: torch.Tensor, grad: torch.Tensor | None, optimizer) -> None:
    """Give ``module`` its ``new_mask``: grown weights start at 0, dropped ones become 0, and the
    optimizer state of both starts afresh (the grown entries' from ``grad``, RigL's)."""
    mask = module.mask
    changed = new_mask != mask
    grown = new_mask & ~mask
    module.weight.data.masked_fill_(grown, 0.0)   # grown weights start at 0
    # in place, into the tie's one mask (_own_masks): torch 2.2's compiled forward kept reading
    # the buffer it was traced with, so an assigned new mask never reached train.compile's graph
    # (RigL grew weights that then took no gradient, and the dropped ones took it)
    mask.copy_(new_mask)
    module.apply_mask_()                          # dropped weights become 0
    if optimizer is not None:
        reset_state_(optimizer, module.weight, changed & ~new_mask)  # dropped
        reset_state_(optimizer, module.weight, grown, grad)


def _check_schedule(method: str, final_density: float, update_every: int, end_step: int | None,
                    start_step: int) -> None:
    """Refuse a RigL or GMP schedule in which no mask would change (end_step left out was 0: the
    masks stayed as they were, a GMP model dense)."""
    if end_step is None:
        raise ValueError(f"{method} needs end_step (T_end, the step of the last mask update; the engine's is "
                         "end_fraction * steps)")
    if method == "rigl" and update_every >= end_step:
        raise ValueError(f"update_every ({update_every}) >= end_step ({end_step}): rigl updates masks at multiples "
                         "of update_every below end_step, so no mask would change")
    if method == "gmp":
        if end_step < 1 or start_step > end_step:
            raise ValueError(f"gmp prunes from start_step through end_step, at t >= 1: start_step {start_step}, "
                             f"end_step {end_step} prune nothing")
        if final_density == 1.0:
            raise ValueError("gmp prunes down to final_density: final_density 1 (the default) prunes nothing")


def _check_pruned(layers: list[_Layer], method: str) -> None:
    """Refuse rigl or static masks on a layer whose mask keeps more than the count of the density
    SμPar corrected it for (``GPT(density=d, mask_density=m)``, ``m > d``: its ``catapult_final_density``):
    only gmp prunes it there, and rigl keeps the count, so its init and lrs stayed ``m / d`` times too
    large (0.5 over 0.25: an Adam lr_mult of 1 / 0.25 on masks keeping 0.5)."""
    for layer in layers:
        final = getattr(layer.module, "catapult_final_density", None)
        if final is None:
            continue
        parts = _row_blocks(layer.module.mask, _parts(layer.module))
        if any(int(part.sum()) > exact_nonzeros(part.numel(), final) for part in parts):
            kept = float(layer.module.mask.double().mean())
            raise ValueError(f"{layer.name!r} keeps {kept:.4g} of its weights (GPT's mask_density above its density "
                             f"{final:g}): its SμPar init and lrs are corrected for density {final:g}, and {method} "
                             "never prunes the mask down there (only gmp does); use MaskUpdater(..., 'gmp', "
                             f"final_density={final:g}), or build the GPT with mask_density=None")


def _own_masks(ties: list[list[_Layer]]) -> None:
    """Give every tie one mask tensor of its own, which the updates then write in place: a mask
    shared with another tie's (one tensor passed to two layers' ``set_mask``), a window of a larger
    tensor or a non-contiguous one is replaced by a copy, and a tie's layers all take its first
    layer's. Masks written in place are what a compiled forward reads: torch 2.2's
    ``torch.compile`` keeps the buffer tensors it traced and does not recompile when a module's
    buffer is reassigned."""
    owner: dict[int, int] = {}  # storage address -> the tie whose mask it holds
    replaced = False
    for i, tie in enumerate(ties):
        mask = tie[0].module.mask
        storage = mask.untyped_storage()
        whole = (mask.is_contiguous() and mask.storage_offset() == 0
                 and storage.nbytes() == mask.numel() * mask.element_size())
        if not whole or owner.get(storage.data_ptr(), i) != i:
            mask = mask.clone(memory_format=torch.contiguous_format)
        owner[mask.untyped_storage().data_ptr()] = i
        for layer in tie:
            if layer.module.mask is not mask:
                layer.module.mask = mask
                replaced = True
    if replaced:   # torch 2.2.2: code compiled before kept reading the replaced masks
        retrace_compiled()


def _ties(layers: list[_Layer]) -> list[list[_Layer]]:
    """``layers`` grouped by their weight Parameter, in order; a tie whose masks differ is refused."""
    ties: dict[int, list[_Layer]] = {}
    for layer in layers:
        ties.setdefault(id(layer.module.weight), []).append(layer)
    for tie in ties.values():
        first = tie[0]
        for other in tie[1:]:
            if (not torch.equal(other.module.mask, first.module.mask)
                    or _parts(other.module) != _parts(first.module)):
                raise ValueError(f"layers {first.name!r} and {other.name!r} share one weight but have different "
                                 "masks: a tied weight needs one mask (catapult.parametrize gives tied hidden layers "
                                 "one); set the same mask on both")
    return list(ties.values())


@torch.no_grad()
def reset_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor,
                 grad: torch.Tensor | None = None) -> None:
    """Zero, at the entries ``where``, every optimizer state tensor of ``param`` that has its shape.

    Given ``grad`` (the entries' gradient, shaped like ``param``), an optimizer with a
    ``start_entries_(param, where, grad)`` method (:class:`~catapult.optim.GIAdam`, whose
    second moment starts from the first gradient) then starts those entries' state from ``grad``;
    should it refuse (a ``v_0`` beyond float16, a ``where`` of another shape), the state is left
    as it was, bit for bit.

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = torch.optim.Adam([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, 2.0, 3.0]); opt.step()
    >>> reset_state_(opt, w, torch.tensor([False, True, False]))
    >>> opt.state[w]["exp_avg"]
    tensor([0.1000, 0.0000, 0.3000])
    """
    state = optimizer.state.get(param, {})
    start = getattr(optimizer, "start_entries_", None) if grad is not None else None
    zeroed = [value for value in state.values() if isinstance(value, torch.Tensor) and value.shape == param.shape]
    kept = []
    if callable(start) and zeroed:
        if where.shape != param.shape:   # (masked_fill_ broadcast it over the state before start's refusal)
            raise ValueError(f"reset_state_: where {tuple(where.shape)} must have the parameter's shape "
                             f"{tuple(param.shape)}")
        kept = [(value, value[where].clone()) for value in zeroed]   # the entries alone: cheap
    for value in zeroed:
        value.masked_fill_(where, 0)
    if callable(start):
        try:
            start(param, where, grad)
        except BaseException:   # a refusal (GIAdam: a v_0 beyond float16) came after the zeroing: undo it,
            for value, entries in kept:   # so the state is as it was, bit for bit
                value[where] = entries
            raise
