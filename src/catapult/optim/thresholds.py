"""Instability thresholds where one learning rate is not the whole story: per-group lr
multipliers under (S)GD, and RAdam's un-rectified first steps (issue 14's formula audit).

Per-group learning rates. With param groups at ``lr_i = lr * m_i`` (muP/SμPar ``lr_mult``), GD
is ``theta <- theta - lr M g`` with ``M = diag(m_i)`` (one ``m_i`` per parameter, from its
group). On a quadratic with Hessian ``H`` the step's error map is ``I - lr M H``; it is stable iff
``lr * lambda_max(M H) < 2``. ``M H`` is similar to the symmetric ``M^1/2 H M^1/2``, so the
threshold to compare with ``2 / lr`` (the first group's when ``m_0 = 1``) is

    lr_scaled sharpness = lambda_max(M^1/2 H M^1/2)        (P^-1 H with P = diag(1 / m_i)),

not ``lambda_max(H)``: a hidden layer at ``lr / m_rho`` with ``m_rho < 1`` is *more* unstable
than the raw sharpness says. :func:`lr_scaled_sharpness` measures it with the same Lanczos
solver and Hessian-vector products as :func:`catapult.sharpness`.

Weight decay (:func:`weight_decay_shift`, in :func:`rule_threshold`, the one place every threshold is
computed). Coupled L2 (``g + wd theta``: SGD, Adam, RAdam) makes the step descend ``L + wd/2
||theta||^2``, whose Hessian is ``H + wd I``: SGD (momentum ``mu``, dampening 0) is stable iff
``lambda_max(H) + wd < (2 + 2 mu) / lr``. The loss's sharpness ``lambda_max(H)`` is therefore
compared with the threshold lowered by ``wd``. Adam's pre-conditioned operator holds the L2
itself (``P^-1 (H + wd I)``, not a shift of ``P^-1 H`` since ``P`` varies): no shift there.
Decoupled decay (AdamW, GI-Adam) multiplies ``theta`` by ``1 - lr wd`` outside the moments; on a
mode of ``P^-1 H`` with eigenvalue ``lam`` the step ``theta' = (1 - lr wd) theta - lr P^-1 m'``
has the characteristic root ``-1`` at ``lr (1 - b1) lam = (2 - lr wd)(1 + b1)``, i.e. the
threshold lowered by ``wd (1 + b1) / (1 - b1)`` (19 wd at b1 = 0.9). Where param groups decay
differently, the difference from the first group's decay enters the measured operator as a
diagonal (:func:`catapult.curvature.preconditioner.step_preconditioner`), so the comparison
stays exact.

RAdam (torch.optim.RAdam, Liu et al. 2020). With ``rho_inf = 2 / (1 - b2) - 1`` and
``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``, step ``t`` is un-rectified while ``rho_t <= 5``:
``theta <- theta - lr m_t / (1 - b1^t)``, EMA momentum SGD without any pre-conditioner, whose
linear stability on the Hessian is that of heavy ball with momentum ``b1`` at lr ``(1 - b1) lr``:
``lambda_max(H) < (2 + 2 b1) / ((1 - b1) lr)``. Afterwards the step is Adam's scaled by the
rectification ``r_t``: pre-conditioned sharpness against ``(2 + 2 b1) / ((1 - b1) r_t lr)``.
:func:`radam_threshold` returns which sharpness applies at step ``t`` and its threshold.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from catapult.arguments import check_integer, check_real, one_flag
from catapult.optim import rules
from catapult.optim.step_count import torch_next_step
from catapult.parametrize import group_lr_mult

__all__ = ["group_lr_multipliers", "group_decays", "unpreconditioned_kind", "lr_scaled_sharpness", "radam_rho",
           "radam_rectified", "radam_rectification", "radam_threshold", "radam_step_kind", "radam_step_scales",
           "radam_reference_step", "rule_threshold",
           "weight_decay_shift", "OPERATORS", "group_moves", "reference_group"]

#: What a threshold is compared with: the loss's Hessian (or SGD's lr-scaled ``M^1/2 H M^1/2``),
#: or the pre-conditioned ``P^-1/2 H P^-1/2`` (holding Adam's coupled L2, ``P^-1/2 (H + wd I) P^-1/2``).
OPERATORS = ("hessian", "preconditioned")


def group_moves(group: Mapping[str, Any]) -> bool:
    """Whether a step moves something of the param ``group``: an lr > 0 and a parameter that
    requires grad (a part frozen by ``requires_grad=False`` has no gradient: torch's step leaves
    it, decay included). The one rule of which groups a threshold is of:
    :func:`group_decays`, :func:`catapult.instability_threshold`'s check that the groups share its
    rule (a frozen group at another ``b1`` or momentum is not refused), and
    :class:`catapult.SharpnessTracker`'s reference group (the first group that moves).

    Example:
        >>> a, b = torch.zeros(1), torch.zeros(1, requires_grad=True)
        >>> group_moves({"params": [a], "lr": 0.1}), group_moves({"params": [b], "lr": 0.0})
        (False, False)
        >>> group_moves({"params": [a, b], "lr": 0.1})
        True
    """
    lr = group["lr"]
    lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
    return lr > 0 and any(p.requires_grad for p in group["params"])


def reference_group(optimizer: torch.optim.Optimizer) -> Mapping[str, Any]:
    """The param group a threshold is of: the first that moves (:func:`group_moves`), else (every
    group at lr 0, a warmup from 0) the first that a positive lr would move (a trainable parameter
    and an ``lr_mult`` > 0: the reference of the steps that follow), else the first. A part frozen by lr 0 or ``requires_grad=False``
    listed first is passed over alike (only lr 0 was: a first group frozen by ``requires_grad=False``
    at lr 0.1 beside the head's 0.05 was the reference of the multipliers). The one reference of
    :func:`group_lr_multipliers`, :func:`catapult.instability_threshold`'s defaults and the
    pre-conditioned / lr-scaled operators' decay rows.

    Example:
        >>> a, b = torch.zeros(1), torch.zeros(1, requires_grad=True)
        >>> reference_group(torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.05}]))["lr"]
        0.05
    """
    return next(iter(_stepping_groups(optimizer)), optimizer.param_groups[0])


def _stepping_groups(optimizer: torch.optim.Optimizer) -> list[Mapping[str, Any]]:
    """The groups a step moves (:func:`group_moves`), or, every group at lr 0 (a warmup from 0), those a
    positive lr would move (a trainable parameter and an ``lr_mult`` > 0): the steps that follow are of
    them (a first group frozen by ``requires_grad=False`` or ``lr_mult`` 0 was the reference at step 0)."""
    groups = optimizer.param_groups
    return ([g for g in groups if group_moves(g)]
            or [g for i, g in enumerate(groups) if any(p.requires_grad for p in g["params"])
                and group_lr_mult(g, i) > 0])


def group_lr_multipliers(optimizer: torch.optim.Optimizer, params) -> torch.Tensor:
    """Flat ``m`` (one entry per scalar parameter of ``params``, in order): each parameter's group
    lr relative to the first group's, ``lr_i / lr_0`` -- the lrs the step applies, as the Adam
    pre-conditioner's ``scale_by_group_lr`` takes them. Where the first group moves nothing while
    another group moves (lr 0 or ``requires_grad=False``: a frozen part listed first), relative to the
    first group that moves (:func:`reference_group`), as :class:`catapult.SharpnessTracker` and
    :func:`catapult.instability_threshold` take it (the frozen groups get 0); while every
    group is at lr 0 (a schedule at 0) the ratios ``lr_mult_i / lr_mult_0`` of the group a positive
    lr moves first (:func:`reference_group`: the steps that follow are relative to it) when the groups carry
    ``lr_mult``, else 1; 0 for a parameter no group holds (the step does not move it).

    Example (the first group frozen at lr 0: the group at 0.1 is the reference):
        >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(2, requires_grad=True)
        >>> opt = torch.optim.SGD([{"params": [a], "lr": 0.0}, {"params": [b], "lr": 0.1}])
        >>> group_lr_multipliers(opt, [a, b]).tolist()
        [0.0, 1.0, 1.0]
    """
    groups = optimizer.param_groups
    where = {id(p): g for g in groups for p in g["params"]}
    # a frozen first group (lr 0 or requires_grad=False) beside one that moves: relative to the mover,
    # as the tracker and instability_threshold take it (reference_group); every group at lr 0: relative to
    # the one that moves from the next step on (the first group's lr_mult, of a part frozen by
    # requires_grad=False, made the step-0 ratios another scale; one frozen by lr_mult 0 made them all 1)
    first = reference_group(optimizer)
    lr_0 = float(first["lr"])

    def rel(g) -> float:
        # the groups' own lrs first: lr_mult ratios were preferred, so groups whose lrs had been
        # set alike by hand (for g in opt.param_groups: g["lr"] = lr) were measured as if scaled
        if lr_0 > 0:
            return float(g["lr"]) / lr_0
        if "lr_mult" in g and "lr_mult" in first and group_lr_mult(first, 0) > 0:
            return group_lr_mult(g) / group_lr_mult(first, 0)
        return 1.0

    out = []
    for p in params:
        g = where.get(id(p))
        out.append(torch.full((p.numel(),), 0.0 if g is None else rel(g), dtype=torch.float64))
    return torch.cat(out)


#: Groups whose lrs (or weight decays) differ by at most this many units in the last place of the
#: parameters' precision (float32's at most), relatively, are alike to :func:`unpreconditioned_kind` and
#: :func:`group_decays`: the step rounds ``lr * g`` there anyway (groups 1 ulp apart, from a schedule's
#: arithmetic, were ``lr_scaled``, which the tracker refuses with ``memory`` / ``distributed``).
ALIKE_ULPS = 4


def _alike_tolerance(params) -> float:
    """``ALIKE_ULPS`` relative units of the finest floating precision among ``params`` (float64's
    without one), float32's for half-precision ones: torch forms a bf16 or fp16 parameter's
    ``lr * g`` in float32 on CUDA (opmath), so lrs 4 bf16 ulps (3%) apart were called alike there."""
    eps = [min(torch.finfo(p.dtype).eps, torch.finfo(torch.float32).eps) for p in params if p.is_floating_point()]
    return ALIKE_ULPS * min(eps, default=torch.finfo(torch.float64).eps)


def _alike(a: float, b: float, tol: float) -> bool:
    return a == b or abs(a - b) <= tol * max(abs(a), abs(b))


def unpreconditioned_kind(optimizer: torch.optim.Optimizer, params) -> str:
    """The sharpness that bounds a step without a pre-conditioner (SGD; RAdam while its step is
    un-rectified, EMA-momentum SGD) over ``params`` (the trainable parameters the sharpness is of):
    ``"hessian"`` where the step moves every one of them at the first group's lr
    (:func:`group_lr_multipliers` all 1, within :data:`ALIKE_ULPS` of the parameters' precision) and its moving groups decay alike (one weight decay, coupled
    or decoupled), else ``"lr_scaled"``, ``M^1/2 (H + W) M^1/2`` (:func:`lr_scaled_sharpness`), which
    takes every group at its own lr, leaves out what the step does not move and holds the decays'
    difference. The one rule of the engine (:func:`catapult.engine.sharpness_rule.resolve_kind`), the
    batched sweeps and :class:`catapult.SharpnessTracker` (:func:`radam_step_kind` with ``params``).

    Example:
        >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        >>> unpreconditioned_kind(torch.optim.SGD([a, b], lr=0.1), [a, b])
        'hessian'
        >>> unpreconditioned_kind(torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1), [a, b])
        'lr_scaled'
        >>> unpreconditioned_kind(torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.1}], lr=0.1),
        ...                       [a, b])
        'lr_scaled'
    """
    params = list(params)
    if not params:      # (the measurement names it; the multipliers' torch.cat of nothing did not)
        return "hessian"
    m = group_lr_multipliers(optimizer, params)
    odd = bool(((m - 1.0).abs() > _alike_tolerance(params)).any())   # (lrs a few ulps apart: alike)
    return "lr_scaled" if odd or len(group_decays(optimizer)) > 1 else "hessian"


def group_decays(optimizer: torch.optim.Optimizer) -> set[tuple[float, bool]]:
    """The distinct ``(weight_decay, decoupled_weight_decay)`` of the param groups the step moves
    (a parameter that requires grad, lr > 0; a part frozen by ``requires_grad=False`` has no gradient
    and torch's step leaves it, decay included): more than one, and no single shift of the threshold
    holds the decay (:func:`weight_decay_shift` is the first group's; the lr-scaled and
    pre-conditioned operators hold the difference). Decays within :data:`ALIKE_ULPS` of the
    parameters' precision are one (the first group's value); a group of weight decay 0 is
    ``(0.0, False)`` whatever its ``decoupled_weight_decay`` (no decay either way).

    >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    >>> sorted(group_decays(torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.1}], lr=0.1)))
    [(0.0, False), (0.1, False)]
    >>> group_decays(torch.optim.RAdam([{"params": [a]}, {"params": [b], "decoupled_weight_decay": True}]))
    {(0.0, False)}
    """
    moving = [g for g in optimizer.param_groups if group_moves(g)]
    tol = _alike_tolerance([p for g in moving for p in g["params"] if p.requires_grad])
    decays: set[tuple[float, bool]] = set()
    for g in moving:   # decays a few ulps apart are one (the first group's value kept)
        wd = float(g.get("weight_decay", 0.0))
        # no decay is no decay, coupled or not: a wd-0 group flagged decoupled counted as a second decay
        decoupled = wd != 0.0 and bool(g.get("decoupled_weight_decay", False))
        if not any(d == decoupled and _alike(w, wd, tol) for w, d in decays):
            decays.add((wd, decoupled))
    return decays


def lr_scaled_sharpness(model: torch.nn.Module, loss_fn, batch, optimizer: torch.optim.Optimizer, *,
                        tol: float = 1e-3, max_iter: int = 100, dtype=None, init: torch.Tensor | None = None,
                        hvp: str = "auto", seed: int = 0, max_basis: int = 20, chunk_size: int | None = None):
    """``lambda_max(M^1/2 H M^1/2)`` with ``M = diag(lr_i / lr_0)`` (see the module docstring): the
    sharpness to compare with the first group's ``instability_threshold`` (``2/lr_0``,
    ``(2 + 2b)/lr_0``) when the groups' learning rates differ. Equals ``catapult.sharpness`` when
    every group has the first one's lr. RAdam whose next step is un-rectified (momentum SGD) is
    measured as SGD (its decay, coupled or decoupled, in the rows). Returns an :class:`~catapult.curvature.EigenEstimate`
    (on ``hvp="finite_difference"`` certified as :func:`catapult.sharpness`'s: :mod:`~catapult.curvature.certify`);
    the model, its gradients and the optimizer are not changed."""
    from catapult.curvature import HessianOperator, lanczos_top_eigenpair
    from catapult.curvature.certify import certified
    from catapult.curvature.preconditioner import PreconditionedOperator, step_preconditioner
    from catapult.curvature.start import check_solver_args, start_vector

    tol, max_iter, max_basis = check_solver_args(tol, max_iter, max_basis, owner="lr_scaled_sharpness")
    op = HessianOperator(model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed, chunk_size=chunk_size)
    matvec = PreconditionedOperator(op, *step_preconditioner(model, optimizer, op, scale_by_group_lr=True))
    v0 = start_vector(init, op.numel, op.dtype, op.device, seed, tol=tol)  # a warm start mixed as sharpness's

    def solve(start, budget, tol):
        return lanczos_top_eigenpair(matvec, start, tol=tol, max_iter=budget, max_basis=max_basis)

    # on hvp="finite_difference" the recurrence's residual says nothing of the products' own error
    return certified(matvec, solve(v0, max_iter, tol), tol=tol, max_iter=max_iter, solve=solve)


def radam_rho(t: int, beta2: float) -> float:
    """``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``, ``rho_inf = 2 / (1 - b2) - 1`` (t >= 1).

    >>> round(radam_rho(1, 0.999), 9)
    1.0
    """
    # t = 0 divided by zero (1 - b2^0), t = -1 or 2.5 gave a verdict for a step that is none
    t = check_integer("", "t", t)  # RAdam's 1-based step (the formulas name no owner)
    beta2 = check_real("radam_rho", "beta2", beta2, low=0.0, high=1.0, high_open=True)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    return rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)


def radam_rectified(t: int, beta2: float) -> bool:
    """Whether RAdam's step ``t`` applies the adaptive (rectified) update: ``rho_t > 5``.

    >>> [t for t in range(1, 9) if not radam_rectified(t, 0.999)]
    [1, 2, 3, 4, 5]
    """
    return radam_rho(t, beta2) > 5.0


def radam_step_kind(optimizer: torch.optim.Optimizer, t: int, params=None) -> str:
    """The sharpness that bounds RAdam's step ``t`` (1-based, torch's count): ``"preconditioned"``
    once that step is rectified; before, the step is EMA-momentum SGD: with ``params`` (the trainable
    parameters) SGD's :func:`unpreconditioned_kind` (``"lr_scaled"`` where the groups' lrs or decays
    differ, or a part is not moved), without ``"hessian"``; ``beta2`` is the reference group's
    (:func:`reference_group`: the first that moves; a body frozen first at another ``beta2`` made the
    head's rectified step 6 un-rectified). One rule for the engine's rows and :class:`catapult.SharpnessTracker`.

    >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    >>> opt = torch.optim.RAdam([{"params": [a]}, {"params": [b], "lr": 1e-4}], lr=1e-3, betas=(0.9, 0.999))
    >>> [radam_step_kind(opt, t) for t in (1, 5, 6)]
    ['hessian', 'hessian', 'preconditioned']
    >>> [radam_step_kind(opt, t, [a, b]) for t in (1, 5, 6)]
    ['lr_scaled', 'lr_scaled', 'preconditioned']
    """
    if radam_rectified(t, float(reference_group(optimizer)["betas"][1])):
        return "preconditioned"
    return "hessian" if params is None else unpreconditioned_kind(optimizer, params)


def radam_rectification(t: int, beta2: float) -> float:
    """``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))`` when
    rectified (``nan`` otherwise)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho = radam_rho(t, beta2)
    if rho <= 5.0:
        return math.nan
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def radam_threshold(lr: float, betas: Any, t: int, *, weight_decay: float = 0.0,
                    decoupled_weight_decay: bool = False) -> tuple[str, float]:
    """``(kind, threshold)`` for RAdam's step ``t`` (1-based, torch's count): ``("hessian",
    (2 + 2 b1) / ((1 - b1) lr))`` while un-rectified (EMA-momentum SGD), else
    ``("preconditioned", (2 + 2 b1) / ((1 - b1) r_t lr))``; lowered by the
    :func:`weight_decay_shift` of that kind (coupled L2: ``wd`` on the Hessian, none on the
    pre-conditioned operator, which holds it; decoupled: ``wd (1 + b1) / (1 - b1)``, then over
    ``r_t``).

    >>> radam_threshold(0.1, (0.9, 0.999), 1)[0], round(radam_threshold(0.1, (0.9, 0.999), 1)[1], 6)
    ('hessian', 380.0)
    >>> radam_threshold(0.1, (0.9, 0.999), 6)[0]
    'preconditioned'
    """
    # b1=nan gave a nan threshold, b1=-1 a threshold of 0 and b1=1 (or True) ZeroDivisionError; betas=(0.9, "0.1")
    # ran as 0.1. A 0-d tensor lr (a group's) is a number too.
    b1 = check_real("radam_threshold", "betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    b2 = check_real("radam_threshold", "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    lr = check_real("radam_threshold", "lr", lr, low=0.0, low_open=True)
    wd = check_real("radam_threshold", "weight_decay", weight_decay, low=0.0)
    kind = "preconditioned" if radam_rectified(t, b2) else "hessian"
    edge = rule_threshold("radam", {"lr": lr, "betas": (b1, b2), "weight_decay": wd,
                                    "decoupled_weight_decay": bool(decoupled_weight_decay)}, operator=kind)
    return kind, (edge if kind == "hessian" else edge / radam_rectification(t, b2))


def radam_reference_step(optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """``(t, beta2)`` of the step RAdam's threshold is taken at (:func:`radam_threshold`, as
    :func:`~catapult.curvature.sharpness.instability_threshold` reads it): the largest step count + 1
    (as torch adds it, :func:`~catapult.optim.step_count.torch_next_step`: a float32 count stops at
    ``2**24``, and torch's update takes its ``r_t`` there) of the parameters that require grad (those the step can move: a part frozen by
    ``requires_grad=False`` keeps the counts its training left, and its larger count made a fine-tuned
    head's un-rectified step 1 the rectified step 11; of the groups that move, :func:`group_moves`, where
    one does: a part frozen by lr 0 counts on; all of them where none requires grad) and the
    ``beta2`` of :func:`reference_group` (the first group that moves, as the threshold's ``lr`` and ``b1``: a
    body frozen first at ``beta2`` 0.99 beside a head at 0.999 made the pre-conditioned operator's rows
    ``r_head / r_body`` = 0.32x the step's). The pre-conditioned operator's rows are relative to
    ``radam_rectification(t, beta2)`` (:func:`radam_step_scales`; a decoupled decay that differs from
    the first group's enters them divided by it).

    Example:
        >>> w = torch.zeros(1, requires_grad=True)
        >>> opt = torch.optim.RAdam([w], betas=(0.9, 0.99))
        >>> w.grad = torch.ones(1); opt.step(); opt.step()
        >>> radam_reference_step(opt)
        (3, 0.99)
    """
    held = [p for g in optimizer.param_groups for p in g["params"]]
    # those a step moves (group_moves): a body frozen by lr 0 still counts its steps (it has gradients), and
    # its count (its earlier training's) made a fine-tuned head's un-rectified step 2 the rectified step 102
    # (every group at lr 0, a warmup from 0: those a positive lr moves, as reference_group)
    movable = ([p for g in _stepping_groups(optimizer) for p in g["params"] if p.requires_grad]
               or [p for p in held if p.requires_grad] or held)
    states = (optimizer.state.get(p) for p in movable)
    # torch's own next count (float32: it stops at 2**24, and its update's r_t reads that), not step + 1
    steps = [torch_next_step(st["step"]) for st in states if isinstance(st, dict) and "step" in st]
    return max(steps, default=1), float(reference_group(optimizer)["betas"][1])


def radam_step_scales(optimizer: torch.optim.Optimizer, params, skip=frozenset()) -> list[float | None]:
    """Each of ``params``' rectification relative to the threshold's: ``r_p / r_ref``, where
    ``r_p = r_t`` of that parameter's own next step (``t`` = its ``state["step"] + 1`` as torch adds
    it, :func:`~catapult.optim.step_count.torch_next_step`; torch RAdam counts each parameter apart; ``beta2`` its group's) and ``r_ref`` that of
    :func:`~catapult.curvature.sharpness.instability_threshold`'s step (the largest count + 1, the
    reference group's ``beta2``: :func:`radam_reference_step`); ``None`` for a parameter no group holds. ``[]`` while every step is
    un-rectified (no pre-conditioner, one threshold). A parameter that lags (no gradient on some
    steps, a group added later) or whose group has another ``beta2`` has its step scaled by its
    own ``r_p``: the pre-conditioned operator carries ``r_p / r_ref`` (1 where the counts and
    ``beta2`` agree), so it is compared with that threshold as is.

    ``skip``: ids of parameters the step leaves (the loss does not reach them and their ``.grad`` is
    None: torch skips a parameter without a ``.grad``), left out of the check (``None`` for them).

    Raises:
        ValueError: when the next step is rectified for some of these parameters (or the
            threshold's step) and not for others: part of it is EMA-momentum SGD, part Adam's,
            and no single sharpness bounds it (the message names a parameter of each).

    Example (the second parameter two steps behind: ``r_7 / r_9`` at ``b2 = 0.999``):
        >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        >>> opt = torch.optim.RAdam([a, b])
        >>> for k in range(8):
        ...     a.grad, b.grad = torch.ones(1), (torch.ones(1) if k >= 2 else None)
        ...     opt.step()
        >>> [round(s, 4) for s in radam_step_scales(opt, [a, b])]
        [1.0, 0.7423]
    """
    groups = optimizer.param_groups
    where = {id(p): g for g in groups for p in g["params"]}

    def next_step(p) -> int:   # as torch counts it (torch_next_step)
        state = optimizer.state.get(p, {})
        return torch_next_step(state["step"]) if isinstance(state, dict) and "step" in state else 1

    t_ref, b2_ref = radam_reference_step(optimizer)
    # skip: ids of parameters the step leaves (.grad None: the loss does not reach them), as torch's does
    held = [(i, p, where[id(p)]) for i, p in enumerate(params) if id(p) in where and id(p) not in skip]
    own = [(i, next_step(p), float(g["betas"][1])) for i, p, g in held]
    ref_ok = radam_rectified(t_ref, b2_ref)
    odd = next(((i, t) for i, t, b2 in own if radam_rectified(t, b2) != ref_ok), None)
    if odd is not None:
        i, t = odd
        raise ValueError(f"RAdam's next step is {'un-' if ref_ok else ''}rectified for parameter {i} (its own step "
                         f"{t}) and {'' if ref_ok else 'un-'}rectified at step {t_ref} (the threshold's: the largest "
                         f"step count + 1): part of the step is momentum SGD, part Adam's, so no single sharpness "
                         f"bounds it (torch RAdam counts each parameter's steps apart)")
    if not ref_ok:
        return []
    r_ref = radam_rectification(t_ref, b2_ref)
    scale = {i: radam_rectification(t, b2) / r_ref for i, t, b2 in own}
    return [scale.get(i) for i in range(len(params))]


def rule_threshold(rule: str, hp: Any, *, operator: str | None = None) -> Any:
    """Instability threshold of update rule ``rule`` (:data:`catapult.optim.rules.RULES`) at
    ``hp["lr"]`` (``hp`` values are numbers or tensors, one per member, not per-parameter lists):

    * SGD: ``2 / lr``; heavy-ball momentum ``b``, dampening ``d``: ``(2 + 2b) / ((1 - d) lr)``
      (``inf`` at ``d = 1``: the step stops reading the gradient; ``0`` for ``d > 1``: it climbs);
      nesterov: ``(2 + 2b) / ((1 + 2b) lr)``.
    * Adam family (compared with the pre-conditioned sharpness):
      ``(2 + 2 b1) / ((1 - b1) lr)`` (38 / lr for b1 = 0.9).

    minus :func:`weight_decay_shift` (``hp["weight_decay"]``), never below 0 (the decay alone
    diverges at ``lr wd >= 2``). ``operator`` (:data:`OPERATORS`) is what the threshold is
    compared with; default ``"hessian"`` for SGD, ``"preconditioned"`` for the Adam family.

    Example:
        >>> round(rule_threshold("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1.0}), 6)   # 38 - wd
        37.0
        >>> round(rule_threshold("adamw", {"lr": 1.0, "weight_decay": 0.1}), 6)         # 38 - 19 wd
        36.1
        >>> round(rule_threshold("adam", {"lr": 1.0, "weight_decay": 0.1}), 6)          # P^-1 (H + wd I) holds it
        38.0
    """
    hp = rules.hp_mapping(hp)
    lr = hp["lr"]
    if rule not in rules.RULES:
        raise ValueError(f"unknown optimizer rule {rule!r}; known: {', '.join(rules.RULES)}")
    if rule != "sgd":
        b1 = _beta1(hp)
        base = (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)
    else:
        base = _sgd_threshold(hp, lr)
    shift = weight_decay_shift(rule, hp, operator=operator)
    if not isinstance(shift, torch.Tensor) and shift == 0.0:
        return base
    out = base - shift
    return out.clamp(min=0.0) if isinstance(out, torch.Tensor) else max(out, 0.0)


def weight_decay_shift(rule: str, hp: Any, *, operator: str | None = None) -> Any:
    """How much weight decay (``hp["weight_decay"]``, the first group's) lowers
    :func:`rule_threshold`: the decay's own curvature in the units of the compared ``operator``'s
    eigenvalues (module docstring).

    * coupled L2 (SGD; Adam/RAdam without ``decoupled_weight_decay``): ``wd`` against the
      Hessian's (or lr-scaled) sharpness; 0 against the pre-conditioned operator, which holds it.
    * decoupled (AdamW, GI-Adam, ``decoupled_weight_decay=True``): ``wd (1 + b1) / (1 - b1)``.

    Example:
        >>> weight_decay_shift("sgd", {"weight_decay": 0.5}), weight_decay_shift("adam", {"weight_decay": 0.5})
        (0.5, 0.0)
        >>> round(weight_decay_shift("adamw", {"weight_decay": 0.5, "betas": (0.9, 0.999)}), 6)
        9.5
    """
    hp = rules.hp_mapping(hp)
    if operator is None:
        operator = "hessian" if rule == "sgd" else "preconditioned"
    if operator not in OPERATORS:
        raise ValueError(f"weight_decay_shift: operator must be one of {OPERATORS}, got {operator!r}")
    wd = hp.get("weight_decay", 0.0)
    if not isinstance(wd, torch.Tensor) and wd == 0:
        return 0.0
    coupled = rules.l2_coefficient(rule, hp)      # 0 for decoupled decay
    if rule != "sgd" and not (isinstance(coupled, torch.Tensor) or coupled != 0):
        b1 = _beta1(hp)
        return wd * (1.0 + b1) / (1.0 - b1)
    return wd if operator == "hessian" else 0.0


def _beta1(hp: Mapping[str, Any]) -> Any:
    return hp["beta1"] if "beta1" in hp else hp.get("betas", (0.9, 0.999))[0]


def _sgd_threshold(hp: Mapping[str, Any], lr: Any) -> Any:
    b = hp.get("momentum", 0.0)
    if not isinstance(b, torch.Tensor) and b == 0.0:
        return 2.0 / lr
    if one_flag("threshold", "nesterov", hp.get("nesterov", False)):
        return (2.0 + 2.0 * b) / ((1.0 + 2.0 * b) * lr)
    # dampening d = 1: after the first step the update no longer reads the gradient (stable at
    # any curvature); d > 1 steps uphill (unstable at any positive curvature)
    damped = 1.0 - hp.get("dampening", 0.0)
    if not isinstance(damped, torch.Tensor) and damped <= 0:
        return math.inf if damped == 0 else 0.0
    heavy_ball = (2.0 + 2.0 * b) / (damped * lr)
    if isinstance(damped, torch.Tensor):
        heavy_ball = torch.where(damped < 0, torch.zeros_like(heavy_ball), heavy_ball)
    return torch.where(b == 0, 2.0 / lr, heavy_ball) if isinstance(b, torch.Tensor) else heavy_ball
