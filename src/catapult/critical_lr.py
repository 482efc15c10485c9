"""Critical learning rate from a loss catapult (warmup paper, App. B.2, Alg. 1-2).

The critical learning rate ``lr_c`` is the smallest lr at which the optimizer's next step makes
the loss go *up*: on a quadratic with Hessian ``H`` under GD, ``lr_c = 2 g.g / g.H g >= 2 / lambda``
(``lambda`` its top curvature), with equality when the gradient ``g`` lies along the top eigenvector.
It is found with forward passes only, on one batch, along the direction ``u`` of the
optimizer's next step (per unit learning rate)::

    L0 = L(theta)
    exponential search:  lr = lr_start; double lr while L(theta - lr u) <= L0  (stop at lr_max)
                         -> bracket [lower, upper] = [lr / 2, lr]
    bisection:           while L(theta - upper u) > L0 + delta |L0|:
                             mid = (lower + upper) / 2
                             if L(theta - mid u) <= L0: lower = mid  else: upper = mid
    lr_c = upper         (lr_start if the loss already rises at lr_start)

Nothing observable changes: the model's parameters are never written (trials are functional
calls on shifted copies, so a graph the caller holds stays valid; parameters of the optimizer
outside the model are restored bitwise from copies), buffers (e.g. BatchNorm running
statistics) are never written either (forward passes run on copies of them), the global RNG
state (CPU, and CUDA when the model is there) is put back, ``.grad`` and the optimizer state
are never written.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from catapult.curvature import distributed as dist_ops
from catapult.curvature.rank_agreement import same_call_on_every_rank
from catapult.curvature.sharded import is_sharded, reset_after_error, reshard
from catapult.curvature.modes import refuse_stale_compiled
from catapult.curvature.preconditioner import step_skips
from catapult.curvature.start import outside_inference_mode
from catapult.curvature.stateless import AttributesKept, RenormedCopies, refuse_scripted
from catapult.critical_lr_passes import (ModelSnapshot, NonFiniteLossError, forward_loss, loss_and_gradient,
                                         shard_reducer, sharded_loss_and_gradient, probe_loss)
from catapult.arguments import caller_stacklevel, check_batch, check_module, check_real
from catapult.optim import registry, rules
from catapult.optim.step_count import torch_next_step
from catapult.parametrize import group_lr_mult, unscaled_group_lrs

__all__ = ["CriticalLR", "NonFiniteLossError", "NonFiniteStepError", "critical_lr", "next_step_direction", "probe_loss", "ModelSnapshot",
           "coupled_l2_penalty"]

#: Safety limits of the search (a loss that keeps falling forever, a discontinuous loss).
MAX_DOUBLINGS = 64
MAX_BISECTIONS = 60


class NonFiniteStepError(NonFiniteLossError):
    """The optimizer's first step direction is not finite (Adam with ``eps = 0`` divides a zero
    gradient by zero): every trial's loss would be nan and read as a rise, so the search returned
    ``lr_start`` beside a nan. A training run takes that step and diverges at its first update.

    Example:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 0.0]]), torch.ones(1, 1))   # no gradient on weight[0, 1]
        >>> try:
        ...     critical_lr(model, torch.nn.MSELoss(), batch, torch.optim.Adam(model.parameters(), eps=0.0))
        ... except NonFiniteStepError as err:
        ...     print(str(err)[:68])
        critical_lr: the optimizer's step direction has 1 non-finite entries
    """


@dataclass
class CriticalLR:
    """Result of :func:`critical_lr`.

    Attributes:
        lr: the critical learning rate ``lr_c`` (= ``upper``; ``lr_max`` when the loss still
            fell there; ``lr_start`` when it rose already at ``lr_start``). Two cases without a rise
            warn (``RuntimeWarning``) and differ: without ``lr_max``, a loss that never rose in
            ``MAX_DOUBLINGS`` (64) doublings of ``lr_start`` gives ``lr = lower`` (``lr_start 2^64``,
            the largest lr tried) and ``upper = inf``; a zero step (no lr moves the parameters) gives
            ``lr = lower = upper = lr_max``, or ``inf`` without ``lr_max``, from the one forward pass.
        lower: the largest lr tried whose step did not raise the loss (0.0 if none).
        upper: the smallest lr tried whose step raised the loss, with
            ``L <= L0 + delta |L0|`` (``lr_max`` when capped; ``inf`` if no rise was ever found;
            with coupled L2 the objective ``J = L + wd/2 ||theta||^2`` rises, by at most ``delta |L0|``).
        forward_passes: forward passes spent, including the one that gave ``loss0`` (and the
            gradient); with ``distributed=True`` those this process ran, with the ones that told
            whether ``loss_fn`` is a mean or a sum over samples.
        loss0: ``L(theta)`` on the batch (the loss alone: without the coupled L2 that the search's
            objective adds, :func:`coupled_l2_penalty`).

    Example:
        >>> result = CriticalLR(lr=0.5, lower=0.25, upper=0.5, forward_passes=3, loss0=1.0)
        >>> result.lr == result.upper
        True
    """

    lr: float
    lower: float
    upper: float
    forward_passes: int
    loss0: float


# --------------------------------------------------------------------------------------------
# The next step's direction
# --------------------------------------------------------------------------------------------
def _rule_state(rule: str, state: dict, view: Callable[[Tensor], Tensor] = lambda x: x) -> rules.State | None:
    """One parameter's torch optimizer state as a :class:`catapult.optim.rules.State` (None
    before its first step), its moments seen through ``view``."""
    if rule == "sgd":
        return rules.State(momentum_buffer=[state.get("momentum_buffer")])
    if state.get("exp_avg") is None:
        return None
    v_max = state.get("max_exp_avg_sq")
    # rules' t = step + 1 is torch's own next count (a float32 count stops at 2**24: torch_next_step)
    return rules.State(step=torch_next_step(state["step"]) - 1, exp_avg=[view(state["exp_avg"])],
                       exp_avg_sq=[view(state["exp_avg_sq"])],
                       max_exp_avg_sq=[None if v_max is None else view(v_max)])


def _direction(rule: str, p: Tensor, g: Tensor, state: dict, hp: dict) -> Tensor:
    """``rules.direction`` of one parameter. torch's Adam, AdamW and RAdam step a complex parameter
    as its real and imaginary parts (``view_as_real``: a ``v`` of each part); the rules' ``g^2``
    of the complex gradient was another direction (0.8 lr off after three Adam steps)."""
    if not (p.is_complex() and rule != "sgd"):
        return rules.direction(rule, [p], [g], _rule_state(rule, state), hp)[0]
    real = torch.view_as_real
    (u,) = rules.direction(rule, [real(p)], [real(g.resolve_conj())], _rule_state(rule, state, real), hp)
    return torch.view_as_complex(u.contiguous())


@torch.no_grad()
def next_step_direction(optimizer: torch.optim.Optimizer,
                        grads: Mapping[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]
                        ) -> list[tuple[Tensor, Tensor]]:
    """Direction of the optimizer's next step, per unit (base) learning rate.

    Returns ``[(param, u), ...]`` for the optimizer's parameters that have a gradient in
    ``grads`` (param -> gradient pairs, matched by identity); the next step would move
    ``param`` to ``param - lr * u`` when the schedule's base lr is ``lr``. ``u`` includes the
    group's ``lr_mult`` (a group's lr is ``lr * lr_mult``). Per optimizer, with ``g`` the
    gradient and the state as it is now:

    * SGD: ``g + wd theta``; heavy-ball momentum ``b``: ``b buf + (1 - dampening) d`` (``d`` if
      there is no buffer yet); nesterov: ``d + b buf'``.
    * Adam / AdamW: ``m_hat / (sqrt(v_hat) + eps)`` from ``m' = b1 m + (1 - b1) g``,
      ``v' = b2 v + (1 - b2) g^2`` at step ``t + 1`` (coupled L2 folded into ``g``; AdamW adds
      ``wd theta``); ``amsgrad`` uses ``max(v_max, v')``.
    * GIAdam: the same with ``v_0`` from its ``v0`` rule on the first step and without the
      ``v`` correction when ``v_bias_correction=False``; ``+ wd theta``.
    * RAdam: rectified ``m_hat * r_t * sqrt(1 - b2^t) / (sqrt(v') + eps)`` when ``rho_t > 5``,
      else ``m_hat``.

    The formulas are :func:`catapult.optim.rules.direction`'s. Nothing is written: the
    optimizer state is only read.

    Raises:
        NotImplementedError: for other optimizers (the message names it).

    Example (SGD moves along the gradient; Adam's first step along its sign):
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> g = torch.tensor([4.0, -0.5])
        >>> [u for _, u in next_step_direction(torch.optim.SGD([w], lr=0.1), {w: g})]
        [tensor([ 4.0000, -0.5000])]
        >>> [u.round(decimals=4) for _, u in next_step_direction(torch.optim.Adam([w]), {w: g})]
        [tensor([ 1., -1.])]
    """
    registry.spec_for(optimizer)          # NotImplementedError (naming it) for other classes
    pairs = grads.items() if isinstance(grads, Mapping) else grads
    by_id = {id(p): g for p, g in pairs}
    out = []
    for index, group in enumerate(optimizer.param_groups):
        lr_mult = group_lr_mult(group, index)
        for p in group["params"]:
            g = by_id.get(id(p))
            if g is None:
                continue
            state = optimizer.state.get(p, {})     # .get: never create state entries
            rule = registry.rule_for(optimizer, group)
            hp = registry.hyperparameters(group, optimizer=optimizer, param=p)
            u = _direction(rule, p, g, state, hp)
            out.append((p, u * lr_mult if lr_mult != 1.0 else u))
    return out


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------
def _check_positive(name: str, value, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    return check_real("critical_lr", name, value, low=0.0, low_open=True)


#: How :func:`critical_lr`'s warning about groups' own lrs begins (PersistentCatapultWarmup, which
#: warns about them once when it is built, leaves it out of its searches).
GROUP_LRS_WARNING = "critical_lr: the param groups' lrs differ"


def _warn_group_lrs_ignored(optimizer: torch.optim.Optimizer) -> None:
    """Warn when the groups' own lrs differ and none sets ``lr_mult``: the trials move every
    group by the same lr, so the answer is not about this optimizer's step with its ratios."""
    shown = unscaled_group_lrs(optimizer.param_groups)
    if shown is not None:
        warnings.warn(f"{GROUP_LRS_WARNING} ({shown}) but none sets 'lr_mult': every group is moved by the same "
                      f"trial lr (a group at lr 0 too), not in those ratios, so the result is not the critical lr "
                      f"of this optimizer's step; give each group 'lr_mult' (e.g. its lr / the largest), as "
                      f"catapult.param_groups does", UserWarning, stacklevel=caller_stacklevel())


def coupled_l2_penalty(optimizer: torch.optim.Optimizer, direction: Sequence[tuple[Tensor, Tensor]], *,
                       sharded: bool = False) -> Callable[[float], float]:
    """``lr -> sum_i wd_i / 2 ||theta_i - lr u_i||^2`` over the parameters of ``direction``
    (:func:`next_step_direction`'s pairs) whose groups add a coupled L2 ``wd_i theta`` to the gradient
    (SGD, Adam, RAdam without ``decoupled_weight_decay``: :func:`catapult.optim.rules.l2_coefficient`):
    the step descends ``L + wd/2 ||theta||^2``, so that is the objective whose rise :func:`critical_lr`
    reads, as the instability threshold is that of ``H + wd I``
    (:func:`catapult.optim.thresholds.weight_decay_shift`). Decoupled decay adds nothing (0 at every lr).
    In float64; ``sharded``: each rank holds its rows of each parameter (summed over the ranks).

    Example (SGD, ``wd = 2``, ``theta = 1``, ``u = theta + grad = 3``: ``(1 - 3 lr)^2``):
        >>> w = torch.nn.Parameter(torch.ones(1))
        >>> penalty = coupled_l2_penalty(torch.optim.SGD([w], lr=0.1, weight_decay=2.0), [(w, torch.full((1,), 3.0))])
        >>> penalty(0.0), penalty(1.0)
        (1.0, 4.0)
    """
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    device = direction[0][0].device if direction else torch.device("cpu")   # (NCCL reduces on the GPU)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for i, (p, u) in enumerate(direction):
        group = where.get(id(p))
        if group is None:   # (was a KeyError naming an id)
            raise ValueError(f"coupled_l2_penalty: direction[{i}]'s parameter is not one of the optimizer's "
                             f"(pass next_step_direction(optimizer, grads)'s pairs)")
        if u.numel() != p.numel():
            raise ValueError(f"coupled_l2_penalty: direction[{i}] has a step of shape {tuple(u.shape)} for a "
                             f"parameter of shape {tuple(p.shape)}")
        wd = float(rules.l2_coefficient(registry.rule_for(optimizer, group),
                                        registry.hyperparameters(group, optimizer=optimizer, param=p)))
        if wd == 0.0:
            continue
        theta, step = p.detach(), u.detach()
        if sharded:
            theta, step = theta.to_local(), step.to_local()
        theta, step = theta.reshape(-1).to(torch.float64), step.reshape(-1).to(torch.float64)
        sums += wd / 2 * torch.stack([theta @ theta, -2.0 * (theta @ step), step @ step]).to(device)
    if sharded:   # every rank calls this (critical_lr is one call on every rank), with its rows
        dist_ops.all_reduce_sum(sums)
    a, b, c = (float(x) for x in sums.cpu())
    if a == b == c == 0.0:
        return lambda lr: 0.0
    return lambda lr: a + b * lr + c * lr * lr


@torch.no_grad()
def _zero_step(direction: Sequence[tuple[Tensor, Tensor]], sharded: bool, distributed: bool) -> bool:
    """Whether every entry of the step ``u`` is zero (on every rank's rows when ``distributed``)."""
    moving = sum(int(torch.count_nonzero(u.to_local() if sharded else u)) for _, u in direction)
    if distributed:   # every rank reaches this (after the same direction checks): agree on one answer
        device = direction[0][0].device if direction else torch.device("cpu")
        moving = int(dist_ops.all_reduce_sum(torch.tensor([moving], dtype=torch.int64, device=device)).item())
    return moving == 0


def _warn_unmet_stop(lower: float, upper: float, loss_upper: float, rise_tolerance: float, objective0: float,
                     rtol: float | None) -> None:
    """A RuntimeWarning when the bisection ended (its cap, or a bracket of adjacent floats) with
    ``upper`` short of its promise: a loss that jumps at ``lr*`` (``L(upper) > L0 + delta |L0|``
    however close ``upper`` comes), or an ``rtol`` below what the floats can halve. Silent, the
    result read as a point within ``delta`` (or ``rtol``) of the critical lr."""
    unmet = []
    if not loss_upper <= rise_tolerance:
        unmet.append(f"the loss at upper is {loss_upper:.6g}, above L0 + delta |L0| = {rise_tolerance:.6g} "
                     f"(L0 {objective0:.6g}: the loss jumps there)")
    if rtol is not None and not upper - lower <= rtol * lower:
        unmet.append(f"the bracket's relative width {(upper - lower) / lower:.3g} is above rtol = {rtol:g}")
    if unmet:
        warnings.warn(f"critical_lr: the bisection stopped at [lower, upper] = [{lower!r}, {upper!r}]: "
                      f"{'; '.join(unmet)}; upper is the smallest lr tried that raised the loss",
                      RuntimeWarning, stacklevel=caller_stacklevel())


@outside_inference_mode
@same_call_on_every_rank
def critical_lr(model: torch.nn.Module, loss_fn: Callable, batch: Sequence,
                optimizer: torch.optim.Optimizer, *, lr_start: float = 1e-4,
                lr_max: float | None = None, delta: float = 0.1, rtol: float | None = None,
                distributed: bool = False) -> CriticalLR:
    """Critical learning rate of the optimizer's next step on ``batch`` (paper Alg. 1-2).

    With ``u`` = :func:`next_step_direction` (from this batch's gradient and the optimizer's
    current state) and ``L(lr) = loss_fn(model(inputs), targets)`` at ``theta - lr u``, plus the
    coupled L2 ``wd/2 ||theta - lr u||^2`` of groups whose step adds ``wd theta`` to the gradient
    (SGD, Adam, RAdam: the objective the step descends, :func:`coupled_l2_penalty`; none for
    decoupled decay)::

        L0 = L(0)
        lr = lr_start; while L(lr) <= L0: lower = lr; lr = 2 lr (capped at lr_max)
        upper = lr; while L(upper) > L0 + delta |L0|:
            mid = (lower + upper) / 2; if L(mid) <= L0: lower = mid else: upper = mid
        lr_c = upper

    (With coupled L2, ``L`` above is the objective ``J``, but the accepted rise stays ``delta |L0|``,
    relative to the loss alone as in the paper: a decay term ``wd/2 ||theta||^2`` larger than the
    loss does not loosen the stop. A parameter the loss does not reach is moved as torch's step moves it:
    not at all while its ``.grad`` is None, by its decay with a ``.grad`` of zeros, its ``wd/2 ||theta||^2``
    then in ``J``; ``.grad`` is read at the call, so call it where the step would read it.)

    A trial counts as a rise only when ``L > L0`` (the paper writes "double while L < L0"):
    a tie -- a step too small to change a float32 loss -- keeps the search going instead of
    stopping at ``lr_start``.

    If the loss rises at ``lr_start``, ``lr_c = lr_start`` (``lower = 0``); if it still
    falls at ``lr_max``, ``lr_c = lower = upper = lr_max``; with no ``lr_max``, if it has not risen
    after 64 doublings, ``lr = lower = lr_start 2^64`` and ``upper = inf``. A zero step ``u = 0`` (a
    stationary point: zero gradient, no momentum or coupled decay) changes the loss at no lr: it
    returns at once, ``lr = lower = upper = lr_max`` (``inf`` without one). Both warn
    (``RuntimeWarning``). A non-finite trial loss counts as a rise. The returned lr is a *base* lr: a param group with ``lr_mult`` moves by
    ``lr * lr_mult * u`` (the convention of ``catapult.schedules.attach``), so the result can
    be fed straight into a schedule; the groups' current ``lr`` values play no part (groups
    with different lrs but no ``lr_mult`` all move with the same trial lr: a ``UserWarning``
    says so, as :func:`catapult.schedules.attach` does).

    The model is evaluated in its current mode (train/eval); every trial forward pass runs
    under ``torch.no_grad`` with the buffers and RNG state of the start, so dropout masks and
    BatchNorm statistics are the same for all trials. Afterwards parameters (bitwise, from
    copies), buffers, the RNG state, ``.grad`` and the optimizer state are as before.

    Args:
        model, loss_fn, batch: the loss ``loss_fn(model(inputs), targets)`` of ``batch =
            (inputs, targets)``.
        optimizer: whose next step is probed (SGD, Adam, AdamW, RAdam, GIAdam).
        lr_start: first lr tried (paper: 1e-4, or ``lr_target / warmup_steps``).
        lr_max: stop the exponential search here (e.g. ``lr_target``); None = no cap.
        delta: relative loss rise accepted at ``upper`` (paper: 0.1 for SGD, ~0.01 for Adam):
            ``delta |L0|``, of the loss ``L0`` without the coupled L2.
        distributed: inside an initialised ``torch.distributed`` process group, ``batch`` is this
            rank's shard: the loss and its gradient are the union's (all-reduced, weighted by
            shard size for a mean over samples and equally for a sum:
            :func:`~catapult.curvature.distributed.union_weight`), so every rank finds the same
            ``lr``; a DDP wrapper
            is unwrapped; a BatchNorm in train mode is refused (shard statistics). A model
            sharded by FSDP2 (``fully_shard``) needs it: its loss and gradient then come from its
            own forward and backward, and each trial moves this rank's rows of the parameters
            in place (restored from copies afterwards).
        rtol: bracket tolerance. ``None`` (default) is the paper's stop above. A number
            bisects until ``upper - lower <= rtol * lower`` as well (and the delta test), so
            that the returned ``lr = upper`` is within ``rtol`` (relative, from above) of the
            *one-step critical lr* ``lr* = sup{lr : L(theta - lr u) <= L0}`` whenever the loss
            along ``u`` crosses ``L0`` once (a quadratic, any locally convex ray):
            ``lower <= lr* <= upper`` at every bisection step, hence
            ``0 <= (upper - lr*) / lr* <= (upper - lower) / lower <= rtol``. Each halving of
            the bracket costs one forward pass (about ``log2(1 / rtol)`` of them). That holds to the
            parameters' rounding: an ``rtol`` below their dtype's eps (float32: 1.2e-7) warns.

    What the returned lr means. ``lr = upper`` is the smallest lr *tried* at which the step
    raised the loss by at most ``delta |L0|``: a point past the one-step critical lr ``lr*``,
    not ``lr*`` itself. With the default (no ``rtol``) its distance from ``lr*`` is set by
    ``delta`` and by the curvature along ``u``: on a quadratic, ``L(lr) - L0 = a lr (lr - lr*)``
    so ``L(upper) <= (1 + delta) L0`` allows ``upper`` up to ``lr* (1 + delta L0/(a lr*^2))``
    -- 2.6-11 % above ``lr*`` at ``delta = 0.1`` in the audit's cases. Pass ``rtol`` for a
    guaranteed bound. A bisection that ends short of its stop (a loss that jumps at ``lr*``, so
    that ``L(upper)`` stays above ``L0 + delta |L0|``; an ``rtol`` the floats cannot halve to)
    stops once the bracket is two adjacent floats and says so in a ``RuntimeWarning``.

    Raises:
        ValueError: bad arguments, ``L0`` not finite (nothing to compare against), a loss
            that is not a scalar, or one that depends on none of the optimizer's parameters.
        NotImplementedError: an optimizer without a direction rule.

    Example: GD on ``L(w) = mean((x w - y)^2)`` with ``x = (2, 0), (0, 1)`` (Hessian
    ``diag(4, 1)``), from ``w = 0`` with ``y = (1, 0)``, whose gradient lies along the top
    eigenvector: ``L(lr) = (4 lr - 1)^2 / 2`` rises above ``L0 = 1/2`` exactly for ``lr > 2 / 4``.
    Doubling from 1/64 brackets ``[0.5, 1]``; bisection stops once ``L(upper) <= 1.1 L0``:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> result = critical_lr(model, torch.nn.MSELoss(), batch, opt, lr_start=1 / 64)
        >>> result.lower, result.lr, result.loss0
        (0.5, 0.5078125, 0.5)
        >>> model.weight                        # restored
        Parameter containing:
        tensor([[0., 0.]], requires_grad=True)
    """
    lr_start = _check_positive("lr_start", lr_start)
    lr_max = _check_positive("lr_max", lr_max, allow_none=True)
    delta = _check_positive("delta", delta)
    rtol = _check_positive("rtol", rtol, allow_none=True)
    if lr_max is not None and lr_start > lr_max:
        raise ValueError(f"lr_start ({lr_start}) must be <= lr_max ({lr_max})")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_module("critical_lr", model)
    refuse_scripted("critical_lr", model)
    refuse_stale_compiled("critical_lr", model)   # torch 2.2.2: every trial loss at the traced parameters
    check_batch("critical_lr", batch, allow_empty=distributed)
    registry.spec_for(optimizer)              # unsupported optimizer: fail before any work
    registry.refuse_maximize(optimizer, "critical_lr")
    _warn_group_lrs_ignored(optimizer)
    # a model sharded by FSDP2: the loss and gradient come from its own forward and backward,
    # and the trials move each rank's rows of the parameters in place
    sharded = is_sharded(model)
    if sharded and not distributed:
        raise ValueError("critical_lr: the model's parameters are DTensor shards (FSDP2 fully_shard): pass "
                         "distributed=True, on every rank of its process group")
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if not params:
        raise ValueError("critical_lr: the optimizer has no parameters that require grad")
    half = sorted({str(p.dtype)[6:] for p in params if p.dtype in (torch.float16, torch.bfloat16)})
    if half:
        # a trial step below the parameters' resolution moves nothing, and a loss rounded to 8 bits
        # reads its noise as a rise: one GI-Adam step on a bfloat16 model gave 2e-4 for 4.9 in
        # float64 (float16: 3.3). Under torch.autocast the parameters stay float32 and this holds.
        warnings.warn(f"critical_lr: parameters in {', '.join(half)}: trial steps below their resolution and "
                      f"the loss's rounding can read as rises, and the search may stop far below the critical lr "
                      f"of the float32 model; measure a float32 copy (or train under torch.autocast)",
                      stacklevel=caller_stacklevel())

    coarsest = max((p.dtype for p in params if p.is_floating_point()), key=lambda d: torch.finfo(d).eps, default=None)
    if rtol is not None and coarsest is not None and rtol < torch.finfo(coarsest).eps:
        # float32, rtol = 1e-8: steps within 3e-8 of lr* = 1/2 rounded to the same parameters and
        # loss, read as no rise; the bracket [0.50000003, 0.50000003] missed lr*, silently
        warnings.warn(f"critical_lr: rtol = {rtol:g} is below the resolution of {str(coarsest)[6:]} parameters "
                      f"(eps {torch.finfo(coarsest).eps:.3g}): trial steps that close to lr* round to the same "
                      f"parameters and loss, and the bracket can miss lr* by about that much", stacklevel=caller_stacklevel())

    # distributed: batch is this rank's shard; the union's loss and its gradient are the
    # weighted sums over the ranks, all-reduced (catapult.curvature.distributed.union_weight)
    reduce = shard_reducer(model, loss_fn, batch) if distributed else None
    if distributed:
        model = dist_ops.unwrap_ddp(model)
    snapshot = ModelSnapshot(model)
    originals: list[tuple[Tensor, Tensor]] = []
    passes = 0 if reduce is None else reduce.passes
    renormed, kept = False, AttributesKept()
    try:
        if sharded:
            loss0, grads = sharded_loss_and_gradient(model, loss_fn, batch, params, reduce.weight, kept)
        else:
            # an F.embedding(max_norm=) call in the forward gets a copy of the weight: it wrote the model's rows
            renorm = RenormedCopies()
            loss0, grads = loss_and_gradient(model, loss_fn, batch, params, snapshot, reduce, renorm, kept)
            renormed = renorm.seen
        passes += 1
        if all(g is None for g in grads):  # e.g. the optimizer of another model: no trial would move the loss
            raise ValueError("critical_lr: the loss does not depend on any parameter of "
                             "the optimizer")
        # a parameter the loss does not reach is skipped by torch's step while its .grad is None, and
        # stepped with a .grad of zeros (its coupled L2 wd theta then decays it: J falls by it too)
        skips = step_skips(params, [g is not None for g in grads])
        direction = next_step_direction(
            optimizer, {p: torch.zeros_like(p) if g is None else g for p, g, skip in zip(params, grads, skips)
                        if not skip})
        if not sharded:  # (a sharded direction's rows differ per rank: the trials' losses say it)
            bad = sum(int((~torch.isfinite(u)).sum()) for _, u in direction)
            if bad:  # every trial would be nan and read as a rise: lr_c = lr_start, silently
                # the cause: a zero second moment plus an eps of 0 -- set so, or rounded to 0 in
                # float16, where eps = 1e-8 and (1 - b2) g^2 below 6e-8 vanish (torch's step is inf too)
                why = ("Adam with eps = 0 divides a zero gradient by zero" if not half else
                       f"in {', '.join(half)} an eps and a (1 - b2) g^2 below its smallest number round to 0, and "
                       f"the step divides by 0 (the optimizer's own step is inf or nan there too)")
                raise NonFiniteStepError(f"critical_lr: the optimizer's step direction has {bad} non-finite entries "
                                         f"({why}); no lr can be measured")
        if _zero_step(direction, sharded, distributed):
            # a stationary point (g = 0, no momentum, no coupled decay): every trial loss is L0, so the
            # doublings ran out (65 forwards) and warned that the loss "still falls" at lr_start 2^64
            lr = math.inf if lr_max is None else lr_max
            warnings.warn(f"critical_lr: the optimizer's next step is zero (a zero gradient with no momentum or "
                          f"decay to move the parameters): no lr changes the loss, so none is critical; returning "
                          f"lr = lower = upper = {lr:g} ({'lr_max' if lr_max is not None else 'no lr_max'}) "
                          f"without a trial", RuntimeWarning, stacklevel=caller_stacklevel())
            return CriticalLR(lr, lr, lr, passes, loss0)
        if sharded:  # this rank's rows of each parameter, moved in place, restored from copies
            with torch.no_grad():
                in_place, shifted = [(p.to_local(), u.to_local()) for p, u in direction], []
        else:
            # the model's parameters are shifted functionally (writing them in place would bump
            # their version counters and break a graph the caller still holds); only parameters
            # outside the model (a loss_fn's own) are written in place and restored from copies
            owned = {id(p): name for name, p in model.named_parameters()}
            shifted = [(owned[id(p)], p, u) for p, u in direction if id(p) in owned]
            in_place = [(p, u) for p, u in direction if id(p) not in owned]
        originals = [(p, p.detach().clone()) for p, _ in in_place]
        l2 = coupled_l2_penalty(optimizer, direction, sharded=sharded)
        # the search compares the objective J = L + coupled L2; the result's loss0 stays L (what a
        # persistent warmup compares the training loss with: J there re-searched on a risen loss)
        objective0 = loss0 + l2(0.0)

        def trial(lr: float) -> float:
            nonlocal passes
            snapshot.restore()
            with torch.no_grad():
                for (p, p0), (_, u) in zip(originals, in_place):
                    p.copy_(p0).add_(u, alpha=-lr)
                reshard(model)  # a sharded model gathers the moved rows again (else nothing)
                params = {name: torch.add(p.detach(), u, alpha=-lr) for name, p, u in shifted}
                value = forward_loss(model, loss_fn, batch, {**snapshot.buffer_copies(), **params},
                                      RenormedCopies() if renormed else None)
                kept.restore()
                value = (float(value) if reduce is None else reduce(value)) + l2(lr)
            passes += 1
            return value if math.isfinite(value) else math.inf

        # the accepted rise is delta |L0| (the paper's, relative to the loss): relative to J0 a large
        # ||theta||^2 (wd/2 ||theta||^2 >> L0) would let `upper` stop far past lr* (1.03 for 1.0008)
        rise_tolerance = objective0 + delta * abs(loss0)

        # 1. exponential search
        lr = lr_start
        loss_lr = trial(lr)
        if loss_lr > objective0:
            return CriticalLR(lr_start, 0.0, lr_start, passes, loss0)
        lower = lr
        for _ in range(MAX_DOUBLINGS):
            if lr_max is not None and lr >= lr_max:
                return CriticalLR(lr_max, lr_max, lr_max, passes, loss0)
            lr = 2.0 * lr if lr_max is None else min(2.0 * lr, lr_max)
            loss_lr = trial(lr)
            if loss_lr > objective0:
                break
            lower = lr
        else:
            warnings.warn(f"critical_lr: the loss has not risen above L0 by lr = {lower:g}, {MAX_DOUBLINGS} "
                          f"doublings of lr_start ({'no lr_max' if lr_max is None else f'lr_max {lr_max:g} not reached'}"
                          f"); returning lr = lower = {lower:g}, the largest lr "
                          f"tried (not a critical lr), and upper = inf", RuntimeWarning,
                          stacklevel=caller_stacklevel())
            return CriticalLR(lower, lower, math.inf, passes, loss0)
        upper, loss_upper = lr, loss_lr

        # 2. bisection until the loss at `upper` is within delta of L0 (and, with rtol, the
        #    bracket is within rtol of its lower end: a bound on upper's distance from lr*)
        for _ in range(MAX_BISECTIONS):
            if loss_upper <= rise_tolerance and (rtol is None or upper - lower <= rtol * lower):
                break
            mid = 0.5 * (lower + upper)
            if not lower < mid < upper:   # the bracket is two adjacent floats: nothing left to halve
                break
            loss_mid = trial(mid)
            if loss_mid <= objective0:
                lower = mid
            else:
                upper, loss_upper = mid, loss_mid
        _warn_unmet_stop(lower, upper, loss_upper, rise_tolerance, objective0, rtol)
        return CriticalLR(upper, lower, upper, passes, loss0)
    except BaseException:   # a trial that raised inside the model left the root gathered at theta - lr u
        reset_after_error(model)   # (reshard below is a no-op there)
        raise
    finally:
        kept.restore()   # a trial's forward (or loss_fn) that raised after it moved the carried state
        with torch.no_grad():
            for p, p0 in originals:
                p.copy_(p0)
        reshard(model)
        snapshot.restore()
