"""Optimizers: GI-Adam (Adam with the second moment initialised from the first gradient).

GI-Adam (Kalra & Barkeshli, "Why Warmup the Learning Rate?") initialises Adam's second moment
with the squared gradient instead of zero. Adam's first step then has a pre-conditioned
sharpness about ``1/sqrt(1 - beta2)`` times smaller, which prevents the early training failures
that warmup otherwise has to cure.

Update rule for one parameter ``theta`` with gradient ``g_t`` at step ``t = 1, 2, ...``::

    first step only:  m_0 = 0,  v_0 = init(g_1)          (init: see ``v0`` below)
    m_t = b1 * m_{t-1} + (1 - b1) * g_t
    v_t = b2 * v_{t-1} + (1 - b2) * g_t^2                 (v0="grad": v_1 = g_1^2)
    m_hat = m_t / (1 - b1^t)
    v_hat = v_t / (1 - b2^t)   if v_bias_correction else   v_t
    theta <- theta * (1 - lr * weight_decay)               (decoupled, like AdamW)
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

``v_bias_correction=True`` is the paper's code; with ``v_0 = g^2`` it acts as an automatic
warmup ``lr_t = lr * sqrt(1 - b2^t)``. ``v_bias_correction=False`` is the paper's text (``v``
needs no correction once ``v_0 = g^2``).
"""
from __future__ import annotations

import math
import numbers
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from catapult.arguments import check_seed
from catapult.optim import rules
from catapult.optim.rules import V0_CHOICES, check_v0, initial_second_moment

__all__ = ["GIAdam", "GIAdamW", "initial_second_moment", "V0_CHOICES"]


#: The dtype of ``state["step"]``: float64, exact to 2**53 steps. torch.optim.Adam keeps a float32
#: CPU tensor (float64 under a float64 default), which stops counting at 2**24 (float32(2**24 + 1)
#: is 2**24): every later step's bias correction ``1 - b^t`` reused t = 2**24 + 1. A loaded count
#: of any other dtype (a checkpoint of torch Adam, or of this optimizer before) is made this one.
STEP_DTYPE = torch.float64


def _step_count(value: Any) -> Tensor:
    """``state["step"]`` as a :data:`STEP_DTYPE` CPU tensor (a tensor of another dtype, or a number)."""
    return torch.tensor(float(value), dtype=STEP_DTYPE)


_check_v0 = check_v0  # (the rule lives with initial_second_moment)


_OPTIONS = ("lr", "betas", "eps", "weight_decay", "v_bias_correction", "v0", "foreach",
            "maximize", "seed", "decoupled_weight_decay")


def _check_flag(name: str, value: Any, where: str, *, allow_none: bool = False) -> bool | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{where}{name} must be True or False{' or None' if allow_none else ''}, "
                    f"got {value!r}")


def _checked_options(options: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The options in ``options`` (constructor arguments, or the ones a param group sets
    itself: then ``where`` names the group), checked and normalised; a tensor ``lr`` (one
    element) stays that tensor, the constructor's as a group's, as ``torch.optim.Adam`` keeps it
    (schedulers fill it in place)."""
    out = dict(options)
    if "lr" in out:
        lr = out["lr"]
        if isinstance(lr, Tensor) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr)
                                        and lr >= 0):
            raise ValueError(f"{where}Invalid learning rate lr={lr!r}: need a finite number >= 0")
        if not isinstance(out["lr"], Tensor):
            out["lr"] = float(lr)
    for name in ("eps", "weight_decay"):
        if name in out:
            x = out[name]
            if isinstance(x, bool) or not (isinstance(x, numbers.Real) and math.isfinite(x)
                                           and x >= 0):
                raise ValueError(f"{where}Invalid {name}={x!r}: need a finite number >= 0")
            out[name] = float(x)
    if "betas" in out:
        betas = out["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= b < 1.0
                        for b in betas)):
            raise ValueError(f"{where}Invalid betas={betas!r}: need two numbers in [0, 1)")
        out["betas"] = (float(betas[0]), float(betas[1]))
    for name in ("v_bias_correction", "maximize", "decoupled_weight_decay"):
        if name in out:
            out[name] = _check_flag(name, out[name], where)
    if "foreach" in out:
        out["foreach"] = _check_flag("foreach", out["foreach"], where, allow_none=True)
    if "v0" in out:
        try:
            out["v0"] = _check_v0(out["v0"])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}{err}") from None
    if "seed" in out:
        # beyond torch.Generator.manual_seed's range v0="random" failed at the first step, in torch's words
        out["seed"] = check_seed(f"GIAdam {where}".rstrip(), "seed", out["seed"], optional=False)
    return out


#: torch.optim.Adam's flags that GIAdam accepts only at their off values
_TORCH_ADAM_FLAGS = {"amsgrad": (False,), "capturable": (False,), "differentiable": (False,),
                     "fused": (False, None)}


def _check_torch_adam_flags(options: dict[str, Any], where: str, weight_decay: Any) -> None:
    """Refuse torch Adam's flags at a value GIAdam does not implement: ``amsgrad`` & co. on,
    and ``decoupled_weight_decay=False`` with a weight decay (torch Adam's coupled L2, which
    GIAdam's decoupled decay is not). A param group or a ``torch.optim.Adam`` state_dict that
    carries them was taken as is, and GIAdam stepped without them."""
    for name, off in _TORCH_ADAM_FLAGS.items():
        value = options.get(name, off[0])
        if value not in off or not isinstance(value, (bool, type(None))):
            raise ValueError(f"{where}GIAdam does not support {name}={value!r} (accepted only "
                             f"{' or '.join(map(repr, off))}, for torch.optim.Adam compatibility)")
    coupled = options.get("decoupled_weight_decay", True) in (False, 0)
    if coupled and isinstance(weight_decay, numbers.Real) and weight_decay != 0:
        raise ValueError(f"{where}decoupled_weight_decay=False with weight_decay={weight_decay!r} "
                         "is torch Adam's coupled L2 penalty; GIAdam's weight decay is decoupled "
                         "(AdamW's theta *= 1 - lr * wd): set decoupled_weight_decay=True, or "
                         "weight_decay=0")


def _is_torch_adam_group(group: Any) -> bool:
    """A torch Adam/AdamW param group (it has ``amsgrad``; GIAdam's has ``v0``)."""
    return isinstance(group, dict) and "amsgrad" in group and "v0" not in group


def _check_unsaid_coupling(group: dict[str, Any], where: str) -> None:
    """Refuse a torch Adam/AdamW param group (it has ``amsgrad``, GIAdam's has ``v0``) with a
    weight decay and no ``decoupled_weight_decay``: torch before the flag (2.2) writes none, for
    Adam's coupled L2 and AdamW's decoupled decay alike, and GIAdam took either as decoupled."""
    weight_decay = group.get("weight_decay", 0)
    if (_is_torch_adam_group(group) and "decoupled_weight_decay" not in group
            and isinstance(weight_decay, numbers.Real) and weight_decay != 0):
        raise ValueError(f"{where}a torch Adam/AdamW state with weight_decay={weight_decay!r} and no "
                         "decoupled_weight_decay (an older torch, such as 2.2, writes none): Adam's "
                         "decay is a coupled L2 penalty, GIAdam's decoupled. If it came from AdamW, "
                         "set the group's 'decoupled_weight_decay' to True before loading it")


#: The keys of the param groups that GIAdam and torch Adam/AdamW write (and torch's ``params``,
#: ``param_names``; a scheduler's ``initial_lr``).
_ADAM_GROUP_KEYS = frozenset(_OPTIONS) | frozenset(_TORCH_ADAM_FLAGS) | {
    "params", "param_names", "initial_lr"}


def _check_adam_group(group: dict[str, Any], where: str) -> None:
    """Refuse a saved param group that is not an Adam-family group: one with neither ``v0``
    (GIAdam's) nor ``amsgrad`` (torch Adam/AdamW's), named by its keys that no Adam group has.
    Another optimizer's group with no parameter state yet (an SGD before its first step, or
    one without momentum) loaded, its lr taken as Adam's and its weight decay (SGD's and
    Adamax's couple it, an L2 gradient) as decoupled; RAdam's (no key of its own) stepped on
    unrectified."""
    if "v0" in group or "amsgrad" in group:
        return
    foreign = sorted(str(k) for k in group if k not in _ADAM_GROUP_KEYS)
    said = (f"has {', '.join(map(repr, foreign))}, no key of an Adam group" if foreign
            else f"has neither 'v0' (GIAdam's) nor 'amsgrad' (torch Adam/AdamW's), keys {sorted(map(str, group))}")
    raise ValueError(f"{where}{said}: a param group of another optimizer (momentum: SGD; momentum_decay: "
                     "NAdam; none of its own: Adamax, RAdam) does not load into GIAdam")


#: Dtypes narrower than float32's range, whose first ``v_0`` the step checks for overflow.
_NARROW_DTYPES = tuple(d for d in (torch.float16, torch.bfloat16)
                       if torch.finfo(d).max < torch.finfo(torch.float32).max)

#: The keys of a parameter's Adam state (GIAdam's and torch Adam/AdamW's alike).
_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")


def _check_state_keys(state_dict: Any) -> None:
    """Refuse a saved parameter state that is not an Adam state (``step``, ``exp_avg``,
    ``exp_avg_sq``; or empty): another optimizer's. An Adamax state (``exp_inf``) loaded and
    stepped, its ``exp_avg_sq`` drawn afresh mid-run and its coupled L2 taken as decoupled; an
    SGD state (``momentum_buffer``) loaded and the next ``step()`` raised ``KeyError: 'step'``."""
    state = state_dict.get("state") if isinstance(state_dict, dict) else None
    for key, entry in (state.items() if isinstance(state, dict) else ()):
        if isinstance(entry, dict) and entry and set(entry) != set(_STATE_KEYS):
            raise ValueError(f"state_dict: the state of parameter {key} has {sorted(map(str, entry))}, not an "
                             f"Adam state {list(_STATE_KEYS)}: a state of another optimizer (exp_inf: Adamax; "
                             f"momentum_buffer: SGD) does not load into GIAdam")


class GIAdam(torch.optim.Optimizer):
    """Adam whose second moment starts at ``v0 * g_1^2`` (GI-Adam), with decoupled weight decay.

    The update (per parameter, ``t`` = 1-based step count kept in ``state["step"]``)::

        v_0 = init(g_1), m_0 = 0                  (on the first step, see ``initial_second_moment``)
        m_t = b1 m_{t-1} + (1 - b1) g_t,          v_t = b2 v_{t-1} + (1 - b2) g_t^2
        m_hat = m_t / (1 - b1^t),                 v_hat = v_t / (1 - b2^t)  or  v_t
        theta <- theta (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)

    Args:
        params: parameters or param groups (torch.optim conventions; groups may override every
            option below, and may carry ``lr_mult`` for ``catapult.schedules.attach``).
        lr: learning rate.
        betas: ``(b1, b2)``.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled (AdamW-style) weight decay ``wd``: ``theta *= 1 - lr * wd``.
        v_bias_correction: divide ``v`` by ``1 - b2^t`` (True: the paper's code, an implicit
            warmup ``lr * sqrt(1 - b2^t)``; False: the paper's text).
        v0: ``"grad"`` (``v_0 = g_1^2``), ``"random"`` (positive random ``v_0`` with the norm of
            ``g_1^2``; the paper's control) or a number ``a >= 0`` (``v_0 = a g_1^2``; the paper
            uses ``a >= 1``, ``a = 0`` is exactly Adam/AdamW).
        foreach: accepted for torch.optim compatibility; the step is always
            :func:`catapult.optim.rules.update`'s per-tensor arithmetic (the optimizer math is
            written once), so ``foreach=True`` and ``False`` give identical results.
        maximize: ascend instead of descend.
        seed: base seed for ``v0="random"``; parameter number ``i`` (its position across all
            param groups) draws from ``torch.Generator().manual_seed(seed + i)``.
        decoupled_weight_decay: torch Adam's flag, ``True`` (``False`` only with no weight decay);
            every group carries it, so that a GIAdam ``state_dict`` loaded into ``torch.optim.Adam``
            keeps the decay decoupled (without it torch Adam took it for its coupled L2). A state of
            ``v_bias_correction=False`` has no torch Adam counterpart: torch Adam continues it with
            the ``v`` correction (its step ``sqrt(1 - b2^t)`` times GIAdam's), and ``v0`` matters to
            torch only before a parameter's first step (it starts ``v`` at 0).
        amsgrad, capturable, differentiable, fused: torch Adam's flags, accepted at their off
            values (``False``; ``fused`` also ``None``) so that code written for torch Adam runs
            unchanged; any other value is refused (not implemented), in a param group and in a
            loaded state_dict too. A ``torch.optim.Adam`` state_dict loads (and continues with
            GI-Adam's rule from its moments) when these are off and its weight decay is 0 or
            decoupled (``decoupled_weight_decay=True``): Adam's coupled L2 is refused. Its groups
            take ``v_bias_correction=True`` (Adam's ``v`` starts at 0 and needs it), so it
            continues as AdamW would; a parameter it had not started yet starts by this
            optimizer's ``v0`` (``v0=0.0``: as AdamW would).

    ``g_1`` is the parameter's first gradient that is not ``None``, taken as it is: a first
    gradient of zeros (``zero_grad(set_to_none=False)`` before a step that does not reach the
    parameter) gives ``v_0 = 0``, i.e. Adam's start for that parameter. Keep torch's default
    ``set_to_none=True`` so that unused parameters are skipped until they get a gradient.
    A first gradient whose ``v_0`` overflows a float16 parameter (``|g| > 255.9``) is refused, a
    ValueError naming the parameter, before any state is made: those entries would never move again.

    State per parameter uses torch Adam's keys -- ``"step"`` (a scalar float tensor, like torch's, but
    float64: :data:`STEP_DTYPE`),
    ``"exp_avg"``, ``"exp_avg_sq"`` -- so code that reads Adam state works unchanged.
    Weight decay is already decoupled, so :data:`GIAdamW` is an alias of this class.

    Example: with ``v_0 = g^2`` the first step is ``lr * sqrt(1 - b2) * sign(g)`` (Adam's is
    ``lr * sign(g)``), i.e. ``0.1 * sqrt(0.001) = 0.00316`` here; without the ``v``
    correction it is Adam's:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = GIAdam([w], lr=0.1)
        >>> w.grad = torch.tensor([0.5, -4.0])
        >>> opt.step()
        >>> [round(x, 5) for x in w.tolist()]
        [0.99684, -1.99684]
        >>> opt.state[w]["exp_avg_sq"]          # v_1 = b2 g^2 + (1 - b2) g^2 = g^2
        tensor([ 0.2500, 16.0000])
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = GIAdam([w], lr=0.1, v_bias_correction=False)
        >>> w.grad = torch.tensor([0.5, -4.0])
        >>> opt.step()
        >>> [round(x, 5) for x in w.tolist()]
        [0.9, -1.9]
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, v_bias_correction: bool = True,
                 v0: str | float = "grad", *, foreach: bool | None = None, maximize: bool = False,
                 seed: int = 0, amsgrad: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = True):
        # torch Adam's other flags, so code that passes them at their off values switches over
        # unchanged; what they would turn on is not implemented here, and says so
        _check_torch_adam_flags(dict(amsgrad=amsgrad, capturable=capturable, differentiable=differentiable,
                                     fused=fused, decoupled_weight_decay=decoupled_weight_decay), "", weight_decay)
        # decoupled_weight_decay in every group: the groups said nothing of the decay's kind, and
        # torch.optim.Adam, loading a GIAdam state_dict, defaulted to its coupled L2 (wd=0.1: 2.4e-3
        # off the GIAdam continuation after one step)
        defaults = _checked_options(dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            v_bias_correction=v_bias_correction, v0=v0, foreach=foreach, maximize=maximize,
            seed=seed, decoupled_weight_decay=decoupled_weight_decay))
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key in ("v_bias_correction", "foreach", "maximize", "seed"):
                group.setdefault(key, self.defaults.get(key))
            # a torch Adam/AdamW group has no v0: a parameter it had not started yet starts by this
            # optimizer's (it started by "grad" whatever the constructor said: v0=0.0, Adam's start, too)
            group.setdefault("v0", self.defaults.get("v0", "grad"))
            group.setdefault("decoupled_weight_decay", True)   # (a GIAdam state saved before the key)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                step = p_state.get("step") if p_state else None
                if step is not None and not (torch.is_tensor(step) and step.dtype == STEP_DTYPE
                                             and step.device.type == "cpu"):
                    p_state["step"] = _step_count(step)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's ``load_state_dict``, after the constructor's checks of every group's
        options in ``state_dict`` (torch's loader bypasses :meth:`add_param_group`, so an edited
        checkpoint's ``betas=(0.9, 1.0)`` was taken as is); a refused one changes nothing."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        for i, group in enumerate(groups if isinstance(groups, list) else []):
            if isinstance(group, dict):
                where = f"state_dict param group {i}: "
                _checked_options({k: v for k, v in group.items() if k in _OPTIONS}, where)
                _check_torch_adam_flags(group, where, group.get("weight_decay",
                                                                self.defaults["weight_decay"]))
                _check_unsaid_coupling(group, where)
        _check_state_keys(state_dict)   # (a parameter state names the optimizer better than its group)
        for i, group in enumerate(groups if isinstance(groups, list) else []):
            if isinstance(group, dict):
                _check_adam_group(group, f"state_dict param group {i}: ")
        self._check_state_shapes(state_dict)
        if isinstance(groups, list) and any(map(_is_torch_adam_group, groups)):
            # torch Adam/AdamW's v started at 0 and is always bias-corrected: its group takes
            # v_bias_correction=True, as a saved group's other options are taken. It took this
            # optimizer's (GIAdam(v_bias_correction=False): the next step 1 / sqrt(1 - b2^t) times
            # AdamW's, 15.8x after 3 steps at b2 = 0.999)
            # A parameter it had not started starts by v0, which a torch group lacks: this optimizer's
            # group's own (the constructor's default for all took a group built with v0=0.0 for "grad"),
            # and so is v0="random"'s seed (a group built with seed=7 drew by the default seed 0)
            fallback = {"v0": self.defaults.get("v0", "grad"), "seed": self.defaults.get("seed", 0)}
            own = [{key: g.get(key, value) for key, value in fallback.items()} for g in self.param_groups]
            state_dict = dict(state_dict, param_groups=[
                dict(g, v_bias_correction=g.get("v_bias_correction", True),
                     **{key: g.get(key, (own[i] if i < len(own) else fallback)[key]) for key in fallback})
                if _is_torch_adam_group(g) else g for i, g in enumerate(groups)])
        super().load_state_dict(state_dict)

    def _check_state_shapes(self, state_dict: dict[str, Any]) -> None:
        """A moment saved for a parameter of another shape is refused, naming both shapes (it
        loaded, and the next ``step()`` failed inside the update), and so is one beyond the range
        of the float16 parameter it is cast to (inf there: the entries frozen). The saved groups' ``params``
        ids map to this optimizer's parameters in order, as in torch's own loader; where the
        groups do not line up, torch's loader says so."""
        saved_groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not (isinstance(saved_groups, list) and isinstance(state, dict)
                and len(saved_groups) == len(self.param_groups)):
            return
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            ids = saved.get("params") if isinstance(saved, dict) else None
            if not isinstance(ids, list) or len(ids) != len(group["params"]):
                return
            for saved_id, param in zip(ids, group["params"]):
                entry = state.get(saved_id)
                for key, value in (entry.items() if isinstance(entry, dict) else ()):
                    if isinstance(value, Tensor) and key != "step" and value.shape != param.shape:
                        raise ValueError(f"state_dict param group {i}: {key} of parameter {saved_id} has shape "
                                         f"{tuple(value.shape)}, the parameter it loads into {tuple(param.shape)}")
                    # torch's loader casts a moment to the parameter's dtype: a float32 v above 65504 was
                    # inf in float16, those entries never moving again (the first step's refusal, at load)
                    if (isinstance(value, Tensor) and key != "step" and param.dtype in _NARROW_DTYPES
                            and value.is_floating_point() and bool(torch.isfinite(value).all())
                            and not bool(torch.isfinite(value.to(param.dtype)).all())):
                        raise ValueError(f"state_dict param group {i}: {key} of parameter {saved_id} holds values "
                                         f"up to {float(value.abs().max()):g}, beyond {param.dtype} (max "
                                         f"{torch.finfo(param.dtype).max:g}) that it loads as: train it in float32")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim's ``add_param_group``, plus the constructor's checks of the options a
        group sets itself (``lr``, ``betas``, ``eps``, ``weight_decay``, ``v0``, the flags)."""
        if isinstance(param_group, dict):
            where = f"param group {len(self.param_groups)}: "
            param_group.update(_checked_options(
                {k: v for k, v in param_group.items() if k in _OPTIONS}, where))
            _check_torch_adam_flags(param_group, where, param_group.get(
                "weight_decay", self.defaults["weight_decay"]))
        super().add_param_group(param_group)

    # ----------------------------------------------------------------------------------------
    def _param_index(self, param: Tensor) -> int:
        for i, p in enumerate(p for g in self.param_groups for p in g["params"]):
            if p is param:
                return i
        raise KeyError("parameter is not managed by this optimizer")

    def _find_group(self, param: Tensor) -> dict:
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise KeyError("parameter is not managed by this optimizer")

    def initial_exp_avg_sq(self, param: Tensor, grad: Tensor, group: dict | None = None) -> Tensor:
        """``v_0`` this optimizer would create for ``param`` on its first step with ``grad``.

        Pure: no state changes (used by ``catapult.critical_lr`` to predict the next step).
        ``grad`` is the gradient already sign-flipped for ``maximize`` (the sign does not
        matter: ``v_0`` depends on ``g^2`` only).
        """
        group = self._find_group(param) if group is None else group
        return initial_second_moment(grad, group["v0"], self.v0_seed(param, group))

    def v0_seed(self, param: Tensor, group: dict | None = None) -> int:
        """Seed of ``param``'s ``v0="random"`` draw: ``group["seed"] + i``, ``i`` its position
        across all param groups (0 for the other ``v0`` rules, which draw nothing)."""
        group = self._find_group(param) if group is None else group
        return group["seed"] + self._param_index(param) if group["v0"] == "random" else 0

    @torch.no_grad()
    def start_entries_(self, param: Tensor, where: Tensor, grad: Tensor) -> None:
        """Start the entries ``where`` of ``param``'s state afresh from their gradient ``grad``
        (shaped like ``param``): ``m = 0`` and ``v = init(g)`` there, GI-Adam's start of an entry
        whose first gradient is ``g``; the step count is kept. Dynamic sparsity calls it for the
        weights RigL grows (:func:`catapult.sparsity.reset_state_`), where a zeroed ``v`` gave
        Adam's start. Before ``param``'s first step it does nothing (that step starts every entry).
        ``v0="random"`` draws the entries' ``v`` from the parameter's seed plus its step count.
        A ``v`` that overflows the state's dtype (float16: ``|g| > 255.9``) is refused, a
        ValueError naming the parameter, before the state is touched (as the first step's).

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = GIAdam([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, 0.0]); opt.step()
        >>> opt.start_entries_(w, torch.tensor([False, True]), torch.tensor([5.0, 3.0]))
        >>> opt.state[w]["exp_avg_sq"]
        tensor([1., 9.])
        """
        started = self._entries_v0(param, where, grad)
        if started is None:
            return
        state, v0 = started
        state["exp_avg"].masked_fill_(where, 0)
        state["exp_avg_sq"][where] = v0.to(state["exp_avg_sq"].device)

    @torch.no_grad()
    def check_start_entries(self, param: Tensor, where: Tensor, grad: Tensor) -> None:
        """Raise the ValueError :meth:`start_entries_` would raise for these arguments (a ``v``
        beyond the state's dtype, a ``where`` or ``grad`` of another shape), touching nothing:
        for a caller that changes more than the state (RigL's masks and weights) and must refuse
        before any of it.

        >>> w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
        >>> opt = GIAdam([w], lr=0.1)
        >>> w.grad = torch.ones(2, dtype=torch.float16); opt.step()
        >>> try:
        ...     opt.check_start_entries(w, torch.tensor([False, True]), torch.tensor([1.0, 300.0]).half())
        ... except ValueError as e:
        ...     print(str(e)[:46])
        GIAdam.start_entries_: parameter 0, 1 restarte
        >>> opt.state[w]["exp_avg_sq"]
        tensor([1., 1.], dtype=torch.float16)
        """
        self._entries_v0(param, where, grad)

    def _entries_v0(self, param: Tensor, where: Tensor, grad: Tensor) -> tuple[dict, Tensor] | None:
        """``(state, v0)`` of :meth:`start_entries_` (None before the first step), its refusals raised."""
        state = self.state.get(param)
        if not state or state.get("exp_avg_sq") is None:
            return None
        if where.shape != param.shape or grad.shape != param.shape:
            raise ValueError(f"start_entries_: where {tuple(where.shape)} and grad {tuple(grad.shape)} must have "
                             f"the parameter's shape {tuple(param.shape)}")
        group = self._find_group(param)
        seed = self.v0_seed(param, group)
        if group["v0"] == "random":  # another draw than the first step's, the same on every rank
            seed = (seed + int(state["step"].item())) % 2 ** 64
        entries = grad.detach()[where]
        v0 = initial_second_moment(entries.to(state["exp_avg_sq"].dtype), group["v0"], seed)
        # float16: a grown entry's g^2 above 65504 was an inf v there, the entry frozen for good
        self._refuse_v0_overflow(param, group, entries, v0, f"GIAdam.start_entries_: parameter "
                                 f"{self._param_index(param)}, {int(where.sum())} restarted entries")
        return state, v0

    def _check_v0_fits(self, param: Tensor, group: dict, index: int) -> None:
        """The first step's :meth:`_refuse_v0_overflow`, before any state is made."""
        grad = -param.grad if group["maximize"] else param.grad
        self._refuse_v0_overflow(param, group, grad, self.initial_exp_avg_sq(param, grad, group),
                                 f"GIAdam: parameter {index}")

    @staticmethod
    def _refuse_v0_overflow(param: Tensor, group: dict, grad: Tensor, v0: Tensor, what: str) -> None:
        """A first gradient whose ``v_0`` overflows the state's dtype (float16: ``|g| > 255.9``
        for ``g^2``; ``v0="random"``'s norm of ``g^2`` sooner) is refused, naming the parameter
        (``what``): ``v`` was inf there and the entries never moved again (``m / sqrt(inf) = 0``),
        silently (torch Adam's ``(1 - b2) g^2`` fits at first). A gradient that is not finite
        itself is left alone. The one rule of the first step and of :meth:`start_entries_`."""
        if not bool(torch.isfinite(grad).all()) or bool(torch.isfinite(v0).all()):
            return
        raise ValueError(
            f"{what} ({param.dtype}, shape {tuple(param.shape)}): its first second moment "
            f"v_0 (v0={group['v0']!r}) overflows {v0.dtype} (max {torch.finfo(v0.dtype).max:g}; the "
            f"largest |g| is {float(grad.abs().max()):g}), and those entries would never move again: train "
            f"it in float32 (or bfloat16), or scale the loss down")

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One GI-Adam step; ``closure`` (re-evaluates the loss, with grad enabled) is optional."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # refused before any state is made: a half-made state (no exp_avg_sq) would outlive
        # the error (state_dict, critical_lr's direction)
        # a flag set in a param group after construction (group["amsgrad"] = True, as torch
        # Adam honours) was stepped without: the groups are checked at every step
        for i, group in enumerate(self.param_groups):
            _check_torch_adam_flags(group, f"param group {i}: ", group.get("weight_decay", 0.0))
        for index, (group, p) in enumerate((g, p) for g in self.param_groups for p in g["params"]):
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("GIAdam does not support sparse gradients")
            if p.grad is not None and torch.is_complex(p):
                raise RuntimeError("GIAdam does not support complex parameters")
            if p.grad is not None and not self.state.get(p) and p.dtype in _NARROW_DTYPES:
                self._check_v0_fits(p, group, index)
            # seed + i beyond manual_seed's range was refused inside the update: the groups before it
            # stepped, and this group's parameters kept a half-made state (no exp_avg_sq)
            if (p.grad is not None and not self.state.get(p) and group["v0"] == "random"
                    and not rules.SEED_RANGE[0] <= group["seed"] + index < rules.SEED_RANGE[1]):
                raise ValueError(f"GIAdam: v0='random' draws parameter {index} from seed + {index}: seed "
                                 f"{group['seed'] + index} is beyond torch.Generator.manual_seed's range "
                                 "[-2**63, 2**64) (use a smaller seed)")
        for group in self.param_groups:
            params = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:     # v_0 is set by rules.update from this first gradient
                    state["step"] = _step_count(0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
            # a parameter listed twice (torch warns) is updated twice, in turn, as torch Adam's loop
            # does: both came from one old state, the count + 2 for one update of the moments
            rounds: list[list[Tensor]] = []
            listed: dict[int, int] = {}
            for p in params:
                k = listed[id(p)] = listed.get(id(p), -1) + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(p)
            for ps_round in rounds:
                # rules.State has one step count: parameters at different counts (one that missed
                # a gradient earlier) are updated in separate calls
                by_step: dict[int, list[Tensor]] = defaultdict(list)
                for p in ps_round:
                    by_step[int(self.state[p]["step"].item())].append(p)
                for step, ps in by_step.items():
                    self._update(group, step, ps)
        return loss


    def _update(self, group: dict, step: int, params: list[Tensor]) -> None:
        """``rules.update("gi-adam", ...)`` for ``params`` (all at step count ``step``), written
        back into the parameters and this optimizer's state tensors."""
        states = [self.state[p] for p in params]
        random_v0 = group["v0"] == "random"
        hp = dict(lr=float(group["lr"]), betas=group["betas"], eps=group["eps"],
                  weight_decay=group["weight_decay"], v_bias_correction=group["v_bias_correction"],
                  v0=group["v0"], maximize=group["maximize"],
                  seed=[self.v0_seed(p, group) for p in params] if random_v0 else 0)
        old = rules.State(step=step, exp_avg=[s["exp_avg"] for s in states],
                          exp_avg_sq=[s.get("exp_avg_sq") for s in states])
        new_params, new = rules.update("gi-adam", params, [p.grad for p in params], old, hp)
        for p, s, p_new, m, v in zip(params, states, new_params, new.exp_avg, new.exp_avg_sq):
            p.copy_(p_new)
            s["exp_avg"].copy_(m)
            if s.get("exp_avg_sq") is None:
                s["exp_avg_sq"] = v
            else:
                s["exp_avg_sq"].copy_(v)
            s["step"] += 1


#: GI-Adam's weight decay is already decoupled (AdamW-style), so GIAdamW is the same optimizer.
GIAdamW = GIAdam


