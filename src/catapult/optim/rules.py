"""Optimizer update rules as pure functions: SGD, Adam, AdamW, RAdam and GI-Adam, written once.

Every consumer of optimizer math -- the :class:`~catapult.optim.GIAdam` class, the
pre-conditioned sharpness and instability thresholds (``catapult.curvature``), the critical-lr
direction (``catapult.critical_lr``) and the batched ensemble engine -- calls these functions::

    state = init(rule, params, hp)                                  # State(step=0, ...)
    params, state = update(rule, params, grads, state, hp)          # one step, new tensors
    P = preconditioner(rule, grads, state, hp, params=params)       # next step's diagonal P
    u = direction(rule, params, grads, state, hp)                   # next step = theta - lr u
    lam = threshold(rule, hp)                                       # instability threshold

``rule`` is one of :data:`RULES`. Nothing is written in place: inputs (parameters, gradients,
state tensors) are only read, results are new tensors (the caller copies them back).

Hyperparameters ``hp``: a mapping (a torch param group works as is; a dataclass is read through
its fields) with the keys below. A value may be

* a Python number/bool -- the arithmetic is then exactly that of torch.optim's per-tensor path
  (``foreach=False``: same operations, same order), so results are bit-identical to it on the
  same device/dtype (measured 0.0 for adam/adamw/radam in float16/bfloat16/float32/float64 over
  20 steps of lr 1e-2, weight_decay 0.1). torch's ``foreach=True`` path (its default on CUDA)
  orders some operations differently and so differs by rounding, growing with the steps: max
  ``|diff|`` after those 20 steps, adamw float16 8.8e-3; radam float16 2.4e-4, bfloat16 2.0e-3,
  float32 7.5e-9, float64 2.8e-17; adam 0.0;
* a tensor that broadcasts against every parameter tensor -- e.g. the batched engine stacks
  ``N`` members along a leading dim and passes ``lr`` of shape ``(N, 1, 1)`` for a ``(N, a, b)``
  parameter; conditions on such a value (``rho_t > 5`` in RAdam, ``v_bias_correction``) are
  taken elementwise with ``torch.where``, and a tensor ``momentum``/``weight_decay`` is always
  applied (a zero entry then gives torch's step for that member up to rounding);
* a Python ``list`` -- one value (number or tensor) per parameter, in ``params`` order (for
  shapes that differ between parameters, or for per-parameter ``lr_mult``s and GI-Adam seeds).

Keys and defaults: ``lr`` (required by ``update``/``threshold``); SGD: ``momentum=0``,
``dampening=0``, ``nesterov=False``; Adam family: ``betas=(0.9, 0.999)`` (or ``beta1``/
``beta2``), ``eps=1e-8``, ``amsgrad=False`` (adam/adamw); all: ``weight_decay=0``,
``maximize=False``; ``decoupled_weight_decay`` (adam/radam: default False; adamw/gi-adam are
always decoupled); GI-Adam: ``v_bias_correction=True``, ``v0="grad"``, ``seed=0``.

State (:class:`State`): ``step`` (int, steps taken) and per-parameter lists ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad) and ``momentum_buffer``; an entry ``None`` means
"not created yet" (SGD's buffer before the first step, GI-Adam's ``v`` before the first
gradient).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from catapult.arguments import check_integer, one_flag

__all__ = ["RULES", "ADAM_RULES", "State", "init", "update", "preconditioner", "direction",
           "threshold", "l2_coefficient", "initial_second_moment", "V0_CHOICES"]

#: Rule names.
RULES = ("sgd", "adam", "adamw", "radam", "gi-adam")
#: Rules with Adam's moments (``betas``, ``eps``).
ADAM_RULES = ("adam", "adamw", "radam", "gi-adam")
#: String values accepted for GI-Adam's ``v0`` (a number ``a >= 0`` is accepted too).
V0_CHOICES = ("grad", "random")
#: The seeds ``torch.Generator.manual_seed`` takes, ``[low, high)``.
SEED_RANGE = (-2 ** 63, 2 ** 64)

_REQUIRED = object()


@dataclass
class State:
    """Optimizer state of one list of parameters (see the module docstring).

    Example:
        >>> State(step=1, momentum_buffer=[torch.ones(2)])
        State(step=1, exp_avg=None, exp_avg_sq=None, max_exp_avg_sq=None, momentum_buffer=[tensor([1., 1.])])
    """

    step: int = 0
    exp_avg: list | None = None
    exp_avg_sq: list | None = None
    max_exp_avg_sq: list | None = None
    momentum_buffer: list | None = None


# --------------------------------------------------------------------------------------------
# Hyperparameters and scalar-or-tensor arithmetic
# --------------------------------------------------------------------------------------------
def hp_mapping(hp: Any) -> Mapping[str, Any]:
    """``hp`` (a mapping, or a dataclass of hyperparameters) as a mapping of its fields.

    Example:
        >>> @dataclasses.dataclass
        ... class Hyper:
        ...     lr: float = 0.1
        >>> hp_mapping({"lr": 0.1})["lr"], hp_mapping(Hyper())["lr"]
        (0.1, 0.1)
    """
    if isinstance(hp, Mapping):
        return hp
    if dataclasses.is_dataclass(hp):
        return {f.name: getattr(hp, f.name) for f in dataclasses.fields(hp)}
    raise TypeError(f"hp must be a mapping or a dataclass, got {type(hp).__name__}")


def _hp(hp: Mapping[str, Any], key: str, i: int, default: Any = _REQUIRED) -> Any:
    """Value of ``key`` for parameter ``i`` (a list holds one value per parameter)."""
    if key in ("beta1", "beta2") and key not in hp:
        betas = hp.get("betas", (0.9, 0.999))
        value = betas[0] if key == "beta1" else betas[1]
    else:
        value = hp.get(key, default)
    if isinstance(value, list):
        value = value[i]
    if value is _REQUIRED:
        raise KeyError(f"hyperparameter {key!r} is required")
    return one_flag("rules", key, value) if key in ("maximize", "amsgrad", "nesterov", "decoupled_weight_decay") else value


def _is_tensor(x: Any) -> bool:
    return isinstance(x, Tensor)


def _nonzero(x: Any) -> bool:
    """``x != 0`` for a number; a tensor counts as non-zero (applied, no device sync)."""
    return _is_tensor(x) or x != 0


def _add(x: Tensor, y: Tensor, a: Any) -> Tensor:
    """``x + a y``."""
    return x + a * y if _is_tensor(a) else x.add(y, alpha=a)


def _addcmul(x: Tensor, y: Tensor, z: Tensor, a: Any) -> Tensor:
    """``x + a y z``."""
    return x + a * y * z if _is_tensor(a) else x.addcmul(y, z, value=a)


def _addcdiv(x: Tensor, y: Tensor, z: Tensor, a: Any) -> Tensor:
    """``x + a y / z``."""
    return x + a * (y / z) if _is_tensor(a) else x.addcdiv(y, z, value=a)


def _sqrt(x: Any) -> Any:
    return x.sqrt() if _is_tensor(x) else math.sqrt(x)


def _where(cond: Tensor, a: Any, b: Any, like: Tensor) -> Tensor:
    """``torch.where`` whose number branches take ``like``'s dtype and device."""
    def as_tensor(x):
        return x if _is_tensor(x) else torch.tensor(x, dtype=like.dtype, device=like.device)
    return torch.where(cond, as_tensor(a), as_tensor(b))


def _check_rule(rule: str, tensors: Sequence[Tensor] = ()) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown optimizer rule {rule!r}; known: {', '.join(RULES)}")
    if rule != "sgd" and any(torch.is_complex(x) for x in tensors):  # v from the complex g^2: not torch's
        raise ValueError(f"rules: the {rule} rule takes real tensors; torch.optim steps a complex parameter as its "
                         "real and imaginary parts: pass torch.view_as_real of it, its gradient and its state")
    return rule


def _decoupled(rule: str, hp: Mapping[str, Any], i: int) -> bool:
    return rule in ("adamw", "gi-adam") or bool(_hp(hp, "decoupled_weight_decay", i, False))


def l2_coefficient(rule: str, hp: Any, i: int = 0) -> Any:
    """Coupled L2 coefficient of parameter ``i``: the ``wd`` with which ``g + wd theta`` enters
    the update (SGD, Adam, RAdam without ``decoupled_weight_decay``), i.e. the step descends
    ``L + wd/2 ||theta||^2``; 0.0 for decoupled weight decay (AdamW, GI-Adam).

    Example:
        >>> l2_coefficient("adam", {"weight_decay": 0.01}), l2_coefficient("adamw", {"weight_decay": 0.01})
        (0.01, 0.0)
    """
    hp = hp_mapping(hp)
    if _check_rule(rule) != "sgd" and _decoupled(rule, hp, i):
        return 0.0
    return _hp(hp, "weight_decay", i, 0.0)


# --------------------------------------------------------------------------------------------
# GI-Adam's v_0
# --------------------------------------------------------------------------------------------
def check_v0(v0: Any) -> str | float:
    """A GI-Adam ``v0`` checked: ``"grad"``, ``"random"``, or ``a`` as a float once it is a finite number
    ``>= 0``; a ValueError or TypeError naming ``v0`` otherwise (``a < 0`` starts from a negative second
    moment, whose square root is NaN).

    >>> check_v0("grad"), check_v0(2)
    ('grad', 2.0)
    """
    if isinstance(v0, str):
        if v0 not in V0_CHOICES:
            raise ValueError(f"v0 must be one of {V0_CHOICES} or a number a >= 0, got {v0!r}")
        return v0
    if isinstance(v0, bool) or not isinstance(v0, numbers.Real):
        raise TypeError(f"v0 must be one of {V0_CHOICES} or a number a >= 0, got {v0!r}")
    v0 = float(v0)
    if not (math.isfinite(v0) and v0 >= 0):
        raise ValueError(f"v0 = a must be a finite number >= 0 (v_0 = a * g^2), got {v0}")
    return v0


def initial_second_moment(grad: Tensor, v0: str | float | Tensor, seed: int = 0) -> Tensor:
    """The second moment ``v_0`` GI-Adam starts from, for a first gradient ``grad``.

    * ``v0="grad"``: ``v_0 = g^2`` (so ``v_1 = b2 * v_0 + (1 - b2) * g^2 = g^2``);
    * ``v0=a`` (a number, or a tensor broadcasting against ``grad``): ``v_0 = a * g^2`` (the
      paper studies ``a >= 1``; ``a = 0`` is Adam);
    * ``v0="random"`` (the paper's control): ``v_0 = r * ||g^2|| / ||r||`` with
      ``r ~ U[0, 1)`` elementwise, drawn on the CPU from ``torch.Generator().manual_seed(seed)``
      (independent of the global RNG and of the device), so ``v_0`` is positive and has the
      Frobenius norm of ``g^2``.

    Returns a new tensor shaped like ``grad``; nothing else is touched.

    Example:
        >>> g = torch.tensor([1.0, -2.0])
        >>> initial_second_moment(g, "grad"), initial_second_moment(g, 2.0)
        (tensor([1., 4.]), tensor([2., 8.]))
        >>> v0 = initial_second_moment(g, "random", seed=0)
        >>> bool((v0 > 0).all()), round(float(v0.norm()), 4), round(float((g * g).norm()), 4)
        (True, 4.1231, 4.1231)
    """
    g2 = torch.mul(grad, grad)
    if _is_tensor(v0):  # per-member hyperparameters of the batched engines, checked by their configs
        return g2 * v0
    v0 = check_v0(v0)  # v0=-1 gave v_0 = -g^2 (NaN steps), "Grad" float()'s own words
    if v0 == "grad":
        return g2
    if v0 == "random":
        seed = check_integer("initial_second_moment", "seed", seed, low=None)  # int(seed): 3.5 and "3" were 3
        if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:  # GIAdam's seed + the parameter's index
            raise ValueError(f"v0='random': seed {seed} is beyond torch.Generator.manual_seed's range [-2**63, "
                             f"2**64) (GIAdam draws parameter i from seed + i: use a smaller seed)")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        r = torch.rand(grad.shape, generator=generator, dtype=torch.float64)
        r = r.to(device=grad.device, dtype=grad.dtype)
        r_norm = r.norm()
        if r_norm == 0:
            return g2
        return r.mul_(g2.norm() / r_norm)
    return g2.mul_(float(v0))


def _v0(grad: Tensor, hp: Mapping[str, Any], i: int) -> Tensor:
    return initial_second_moment(grad, _hp(hp, "v0", i, "grad"), _hp(hp, "seed", i, 0))


# --------------------------------------------------------------------------------------------
# init / update
# --------------------------------------------------------------------------------------------
def init(rule: str, params: Sequence[Tensor], hp: Any) -> State:
    """Fresh state for ``params`` (``step = 0``).

    SGD: ``momentum_buffer = [None, ...]`` (the first step sets ``buf = d``, like torch).
    Adam / AdamW / RAdam: ``m = v = 0`` (and ``v_max = 0`` with ``amsgrad``).
    GI-Adam: ``m = 0``, ``v = [None, ...]`` -- :func:`update` sets ``v_0`` from the first
    gradients (``v_0 = g_1^2`` by default, see :func:`initial_second_moment`).

    Example:
        >>> init("sgd", [torch.zeros(2)], {}).momentum_buffer
        [None]
        >>> init("adam", [torch.zeros(2)], {}).exp_avg_sq, init("gi-adam", [torch.zeros(2)], {}).exp_avg_sq
        ([tensor([0., 0.])], [None])
    """
    hp = hp_mapping(hp)
    n = len(params)
    if _check_rule(rule) == "sgd":
        return State(step=0, momentum_buffer=[None] * n)
    state = State(step=0, exp_avg=[torch.zeros_like(p, memory_format=torch.preserve_format)
                                   for p in params])
    if rule == "gi-adam":
        state.exp_avg_sq = [None] * n
    else:
        state.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    if rule in ("adam", "adamw") and any(_hp(hp, "amsgrad", i, False) for i in range(n)):
        state.max_exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                                for p in params]
    return state


def _sgd_displacement(p: Tensor, g: Tensor, buf: Tensor | None, hp: Mapping[str, Any], i: int):
    """torch.optim.SGD's step per unit lr and its new momentum buffer::

        d = g + wd theta;   buf = d (first step) | b buf + (1 - dampening) d
        d = buf,  or  d + b buf  with nesterov
    """
    if _hp(hp, "maximize", i, False):
        g = -g
    wd = _hp(hp, "weight_decay", i, 0.0)
    d = _add(g, p, wd) if _nonzero(wd) else g
    momentum = _hp(hp, "momentum", i, 0.0)
    if not _nonzero(momentum):
        return d, buf
    if buf is None:
        buf = torch.clone(d).detach()
    else:
        dampening = _hp(hp, "dampening", i, 0.0)
        buf = _add(buf * momentum if _is_tensor(momentum) else buf.mul(momentum), d, 1 - dampening)
        if _is_tensor(momentum) and _nonzero(dampening):    # torch: no momentum -> buf = d
            buf = torch.where(momentum == 0, d, buf)
    d = _add(d, buf, momentum) if _hp(hp, "nesterov", i, False) else buf
    return d, buf


def _adam_moments(rule: str, p: Tensor, g: Tensor, state: State | None, hp: Mapping[str, Any],
                  i: int):
    """Gradient after coupled L2, next ``t``, ``m'``, ``v'``, ``v_max'`` (or None)::

        g <- g + wd theta (coupled L2 only);  t = step + 1
        m' = lerp(m, g, 1 - b1) = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2
        (m = 0, v = 0 before the first step; GI-Adam: v = v_0 from its v0 rule)
    """
    if _hp(hp, "maximize", i, False):
        g = -g
    b1, b2 = _hp(hp, "beta1", i), _hp(hp, "beta2", i)
    wd = _hp(hp, "weight_decay", i, 0.0)
    if _nonzero(wd) and not _decoupled(rule, hp, i):
        g = _add(g, p, wd)
    first = state is None or state.step == 0
    t = 1 if first else state.step + 1
    m = None if state is None or state.exp_avg is None else state.exp_avg[i]
    v = None if state is None or state.exp_avg_sq is None else state.exp_avg_sq[i]
    if m is None:
        m = torch.zeros_like(p)
    if v is None:
        v = _v0(g, hp, i) if rule == "gi-adam" else torch.zeros_like(p)
    m = m.lerp(g, 1 - b1)
    v = _addcmul(v * b2 if _is_tensor(b2) else v.mul(b2), g, g, 1 - b2)
    v_max = None
    if rule in ("adam", "adamw") and _hp(hp, "amsgrad", i, False):
        old = None if first or state.max_exp_avg_sq is None else state.max_exp_avg_sq[i]
        v_max = v if old is None else torch.maximum(old, v)
    return g, t, m, v, v_max


def _radam_rect2(b2: Any, t: int, bc2: Any):
    """RAdam's ``(rho_t > 5, r_t^2)``: ``rho_inf = 2/(1-b2) - 1``,
    ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``,
    ``r_t^2 = (rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t)`` (the caller takes
    the root: torch.optim.RAdam with ``** 0.5``, the direction with ``math.sqrt``)."""
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * (b2 ** t) / bc2
    return rho_t > 5.0, (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)


def update(rule: str, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
           hp: Any) -> tuple[list[Tensor], State]:
    """One optimizer step: returns ``(new_params, new_state)``; inputs are not modified.

    Per parameter ``theta`` with gradient ``g`` (``-g`` with ``maximize``), ``t = step + 1``:

    * ``sgd`` (torch.optim.SGD): ``d = g + wd theta``; momentum ``b``: ``buf = d`` on the first
      step, then ``buf = b buf + (1 - dampening) d``; ``d = buf`` (nesterov: ``d + b buf``);
      ``theta <- theta - lr d``.
    * ``adam`` (torch.optim.Adam; coupled L2 ``g <- g + wd theta`` unless
      ``decoupled_weight_decay``), ``adamw`` (``theta <- theta (1 - lr wd)`` first)::

          m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2   (amsgrad: v_max = max(v_max, v))
          theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    * ``gi-adam``: AdamW with ``v_0 = init(g_1)`` (``"grad"``: ``g_1^2``; ``a``: ``a g_1^2``;
      ``"random"``: seeded, see :func:`initial_second_moment`) set here on the first step,
      and ``sqrt(v)`` left undivided when ``v_bias_correction=False``.
    * ``radam`` (torch.optim.RAdam): Adam's moments; with ``m_hat = m / (1 - b1^t)`` and
      ``rho_t``, ``r_t`` (see ``_radam_rect2``): ``theta <- theta - lr m_hat r_t sqrt(1-b2^t) /
      (sqrt(v) + eps)`` when ``rho_t > 5``, else ``theta <- theta - lr m_hat``.

    Example (SGD moves by ``lr g``; Adam's first step by ``lr sign(g)``):
        >>> theta, g = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -0.5])]
        >>> new, state = update("sgd", theta, g, init("sgd", theta, {}), {"lr": 0.1})
        >>> new, state.step
        ([tensor([0.7000, 2.0500])], 1)
        >>> new, state = update("adam", theta, g, init("adam", theta, {}), {"lr": 0.1})
        >>> new, state.exp_avg                  # m_1 = (1 - b1) g
        ([tensor([0.9000, 2.1000])], [tensor([ 0.3000, -0.0500])])
    """
    hp = hp_mapping(hp)
    _check_rule(rule, [*params, *grads])
    n = len(params)
    new_params: list[Tensor] = []
    if rule == "sgd":
        old = state.momentum_buffer or [None] * n
        bufs = []
        for i, (p, g) in enumerate(zip(params, grads)):
            d, buf = _sgd_displacement(p, g, old[i], hp, i)
            lr = _hp(hp, "lr", i)
            new_params.append(p - lr * d if _is_tensor(lr) else p.add(d, alpha=-lr))
            bufs.append(buf)
        return new_params, State(step=state.step + 1, momentum_buffer=bufs)

    ms, vs, vmaxs = [], [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        lr, b1, b2 = _hp(hp, "lr", i), _hp(hp, "beta1", i), _hp(hp, "beta2", i)
        eps, wd = _hp(hp, "eps", i, 1e-8), _hp(hp, "weight_decay", i, 0.0)
        if _nonzero(wd) and _decoupled(rule, hp, i):
            p = p * (1 - lr * wd) if _is_tensor(lr) or _is_tensor(wd) else p.mul(1 - lr * wd)
        g, t, m, v, v_max = _adam_moments(rule, p, g, state, hp, i)
        ms.append(m)
        vs.append(v)
        vmaxs.append(v_max)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        if rule == "radam":
            m_hat = m / bc1
            ok, rect2 = _radam_rect2(b2, t, bc2)
            if _is_tensor(ok):        # r_t^2 < 0 where rho_t <= 5: NaN there, not selected
                adaptive = (bc2 ** 0.5) / v.sqrt().add(eps)
                step = torch.where(ok, m_hat * lr * adaptive * rect2 ** 0.5, m_hat * lr)
            elif ok:
                step = m_hat * lr * ((bc2 ** 0.5) / v.sqrt().add(eps)) * rect2 ** 0.5
            else:
                step = m_hat * lr
            new_params.append(p.add(step, alpha=-1.0))
            continue
        step_size = lr / bc1
        denom = (v if v_max is None else v_max).sqrt()
        if rule != "gi-adam":
            denom = denom / (bc2 ** 0.5)
        else:
            correct = _hp(hp, "v_bias_correction", i, True)
            if _is_tensor(correct):
                denom = denom / _where(correct, bc2 ** 0.5, 1.0, denom)
            elif correct:
                denom = denom.div((1 - b2 ** t) ** 0.5)
        denom = denom.add(eps)
        new_params.append(_addcdiv(p, m, denom, -step_size))
    new_state = State(step=state.step + 1, exp_avg=ms, exp_avg_sq=vs,
                      max_exp_avg_sq=vmaxs if any(x is not None for x in vmaxs) else None)
    return new_params, new_state


# --------------------------------------------------------------------------------------------
# What the next step will do: preconditioner, direction, threshold
# --------------------------------------------------------------------------------------------
def preconditioner(rule: str, grads: Sequence[Tensor], state: State | None, hp: Any, *,
                   params: Sequence[Tensor] | None = None) -> list[Tensor] | None:
    """The diagonal preconditioner ``P`` the *next* Adam step applies, one tensor per
    parameter; ``None`` for ``sgd``, and for ``radam`` while its next step is un-rectified
    (``rho_{t+1} <= 5``: EMA-momentum SGD, no preconditioner).

    With ``t = state.step`` (0 with no state), ``g`` the gradient (``-g`` with ``maximize``, then
    ``+ wd theta`` for Adam's coupled L2 -- then ``params`` is required), ``v`` the state's second moment (before the
    first step: 0, for GI-Adam the ``v_0`` its first step would create from ``g``)::

        v' = b2 v + (1 - b2) g^2               (amsgrad: max(v_max, v'))
        P  = (1 - b1^(t+1)) (sqrt(v' / (1 - b2^(t+1))) + eps)

    (GI-Adam with ``v_bias_correction=False``: no ``1 - b2^(t+1)`` division), so the next
    step is ``theta - lr P^-1 m'``-like and ``lambda_max(P^-1 H)`` is compared with
    :func:`threshold`. RAdam's rectified step is ``theta - lr r P^-1 m'`` with its ``eps``
    inside the correction, ``P = (1 - b1^(t+1)) (sqrt(v') + eps) / sqrt(1 - b2^(t+1))``; the
    rectification ``r`` is left to the threshold (:func:`catapult.optim.thresholds.radam_threshold`
    divides by it). With per-member ``beta2`` columns the members must agree on whether the
    step is rectified (``ValueError`` otherwise). The state is not modified.

    Example (Adam before its first step: ``P = (1 - b1) |g|`` with ``eps = 0``):
        >>> preconditioner("adam", [torch.tensor([2.0, -1.0])], None, {"eps": 0.0})
        [tensor([0.2000, 0.1000])]
        >>> preconditioner("sgd", [torch.tensor([2.0, -1.0])], None, {}) is None
        True
    """
    hp = hp_mapping(hp)
    if _check_rule(rule, grads) == "sgd":
        return None
    out = []
    first = state is None or state.step == 0
    t = 0.0 if first else float(state.step)
    if rule == "radam" and not _radam_next_rectified(hp, len(grads), int(t) + 1):
        return None
    for i, g in enumerate(grads):
        b1, b2 = _hp(hp, "beta1", i), _hp(hp, "beta2", i)
        eps, wd = _hp(hp, "eps", i, 1e-8), _hp(hp, "weight_decay", i, 0.0)
        if _nonzero(wd) and not _decoupled(rule, hp, i):
            if params is None:
                raise ValueError("preconditioner: coupled L2 weight decay needs params=")
            # torch negates g before the L2 term: (g + wd theta)^2 was the v' of a maximize step
            g = (-g if _hp(hp, "maximize", i, False) else g) + wd * params[i]
        v = None if first or state.exp_avg_sq is None else state.exp_avg_sq[i]
        if v is not None:
            v_next = b2 * v + (1.0 - b2) * g * g
        elif rule == "gi-adam":
            v_next = b2 * _v0(g, hp, i) + (1.0 - b2) * g * g
        else:
            v_next = (1.0 - b2) * g * g
        if rule in ("adam", "adamw") and _hp(hp, "amsgrad", i, False) and not first:
            v_max = None if state.max_exp_avg_sq is None else state.max_exp_avg_sq[i]
            if v_max is not None:
                v_next = torch.maximum(v_max, v_next)
        correct = rule != "gi-adam" or _hp(hp, "v_bias_correction", i, True)
        if _is_tensor(correct):
            v_correction = _where(correct, 1.0 - b2 ** (t + 1), 1.0, g)
        else:
            v_correction = (1.0 - b2 ** (t + 1)) if correct else 1.0
        if rule == "radam":  # eps added before the correction: (sqrt(v') + eps) / sqrt(1 - b2^t)
            eps = eps / _sqrt(v_correction)
        out.append((1.0 - b1 ** (t + 1)) * (torch.sqrt(v_next / v_correction) + eps))
    return out


def _radam_next_rectified(hp: Mapping[str, Any], n: int, t: int) -> bool:
    """Whether RAdam's step ``t`` is rectified for every parameter (``rho_t > 5``); ``ValueError``
    when per-member ``beta2`` columns disagree."""
    verdicts = set()
    for i in range(n):
        b2 = _hp(hp, "beta2", i)
        ok, _ = _radam_rect2(b2, t, 1 - b2 ** t)
        verdicts.update(ok.flatten().tolist() if _is_tensor(ok) else [bool(ok)])
    if len(verdicts) > 1:
        raise ValueError(f"preconditioner: RAdam's step {t} is rectified for some members only "
                         "(their beta2 differ); ask for each kind apart")
    return verdicts == {True}


def direction(rule: str, params: Sequence[Tensor], grads: Sequence[Tensor], state: State | None,
              hp: Any) -> list[Tensor]:
    """Displacement of the next step per unit lr, ``u``: the next update is ``theta - lr u``.

    * ``sgd``: ``d`` of :func:`update` (``g + wd theta``; momentum ``b``: ``b buf + (1 -
      dampening) d``, ``d`` with no buffer yet; nesterov: ``d + b buf'``).
    * Adam family: ``m' / (1 - b1^t)`` over ``sqrt(v') / sqrt(1 - b2^t) + eps`` from the
      moments of the next step (``t = step + 1``; coupled L2 folded into ``g``); decoupled
      weight decay adds ``wd theta``; GI-Adam takes ``v_0`` from its ``v0`` rule on the first
      step and skips the ``v`` correction when ``v_bias_correction=False``; amsgrad uses
      ``max(v_max, v')``.
    * ``radam``: ``m_hat r_t sqrt(1 - b2^t) / (sqrt(v') + eps)`` when ``rho_t > 5``, else
      ``m_hat``.

    Nothing is written; ``state=None`` means no step taken yet.

    Example (heavy ball: ``u = b buf + g``):
        >>> state = State(step=1, momentum_buffer=[torch.tensor([1.0, 1.0])])
        >>> direction("sgd", [torch.zeros(2)], [torch.tensor([1.0, 0.0])], state, {"momentum": 0.9})
        [tensor([1.9000, 0.9000])]
    """
    hp = hp_mapping(hp)
    _check_rule(rule, [*params, *grads])
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        if rule == "sgd":
            buf = None if state is None or state.momentum_buffer is None else state.momentum_buffer[i]
            out.append(_sgd_displacement(p, g, buf, hp, i)[0])
            continue
        b1, b2 = _hp(hp, "beta1", i), _hp(hp, "beta2", i)
        eps, wd = _hp(hp, "eps", i, 1e-8), _hp(hp, "weight_decay", i, 0.0)
        g, t, m, v, v_max = _adam_moments(rule, p, g, state, hp, i)
        if v_max is not None:
            v = v_max
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        m_hat = m / bc1
        if rule == "radam":
            ok, rect2 = _radam_rect2(b2, t, bc2)
            if _is_tensor(ok):        # r_t^2 < 0 where rho_t <= 5: NaN there, not selected
                u = torch.where(ok, m_hat * (rect2.sqrt() * _sqrt(bc2)) / (v.sqrt() + eps), m_hat)
            elif ok:
                u = m_hat * (math.sqrt(rect2) * _sqrt(bc2)) / (v.sqrt() + eps)
            else:
                u = m_hat
        else:
            correct = rule != "gi-adam" or _hp(hp, "v_bias_correction", i, True)
            if _is_tensor(correct):
                denom = v.sqrt() / _where(correct, _sqrt(bc2), 1.0, v)
            else:
                denom = v.sqrt() / _sqrt(bc2) if correct else v.sqrt()
            u = m_hat / denom.add_(eps)
        if _nonzero(wd) and _decoupled(rule, hp, i):
            u = _add(u, p, wd)
        out.append(u)
    return out


def threshold(rule: str, hp: Any, *, operator: str | None = None) -> Any:
    """Instability threshold of the rule at learning rate ``lr`` (linear stability on a
    quadratic; ``hp`` values are scalars or tensors, not per-parameter lists): SGD ``2 / lr``,
    heavy ball ``(2 + 2b) / ((1 - d) lr)``, nesterov ``(2 + 2b) / ((1 + 2b) lr)``; the Adam family
    ``(2 + 2 b1) / ((1 - b1) lr)``, compared with the pre-conditioned sharpness; each lowered by
    the weight decay the compared ``operator`` leaves out. Written once, in
    :func:`catapult.optim.thresholds.rule_threshold` (the formulas and ``operator`` are there).

    Example:
        >>> threshold("sgd", {"lr": 0.1}), round(threshold("adam", {"lr": 1.0}), 6)
        (20.0, 38.0)
        >>> threshold("sgd", {"lr": torch.tensor([0.1, 0.2])})      # one lr per member
        tensor([20., 10.])
        >>> threshold("sgd", {"lr": 0.1, "weight_decay": 0.5})       # lambda_max(H) + wd < 2 / lr
        19.5
    """
    from catapult.optim.thresholds import rule_threshold

    return rule_threshold(rule, hp, operator=operator)
