"""The diagonal pre-conditioner of an optimizer's next step, as an operator around Hessian
products: ``u -> d * (H (d * u)) + l2 * u`` (:class:`PreconditionedOperator`), the symmetric
``P^-1/2 (H + wd I) P^-1/2`` of the Adam family (:func:`adam_preconditioner`; ``P`` rebuilt from
the optimizer's state without changing it) or, for SGD, ``M^1/2 H M^1/2`` with its per-group lr
multipliers (:func:`step_preconditioner`). Weight decay that the threshold's shift leaves out
(groups decaying otherwise than the first: :func:`catapult.optim.thresholds.weight_decay_shift`)
is in ``l2`` too. :func:`~catapult.curvature.sharpness.preconditioned_sharpness`
and the spectrum's ``optimizer=`` solve on it.
"""
from __future__ import annotations

import torch

from catapult.curvature import sharded
from catapult.optim import registry, rules
from catapult.optim.step_count import torch_next_step

__all__ = ["check_preconditioned", "check_step_optimizer", "check_optimizer_holds", "adam_preconditioner", "step_preconditioner",
           "PreconditionedOperator"]


def check_preconditioned(optimizer):
    """The registry entry of an optimizer with a pre-conditioned sharpness, else TypeError.

    >>> w = [torch.nn.Parameter(torch.zeros(2))]
    >>> check_preconditioned(torch.optim.Adam(w)).preconditioned
    True
    >>> check_preconditioned(torch.optim.SGD(w, lr=0.1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: preconditioned_sharpness supports torch.optim.Adam, torch.optim.AdamW, ...
    """
    try:
        spec = registry.spec_for(optimizer)
    except NotImplementedError:
        spec = None
    if spec is None or not (spec.preconditioned or spec.rule == "radam"):
        raise TypeError(f"preconditioned_sharpness supports torch.optim.Adam, torch.optim.AdamW, "
                        f"catapult.optim.GIAdam and (once rectified) torch.optim.RAdam, got "
                        f"{type(optimizer).__name__}")
    return spec


def _adam_preconditioner(optimizer, grad_flat: torch.Tensor, names, params,
                         scale_by_group_lr: bool, part=sharded.full_tensor, unused=frozenset()):
    """Flat inverse square root of the next step's Adam preconditioner (0 off-optimizer), and
    the coupled-L2 rows ``P^-1 wd`` (None without coupled L2); ``P`` from
    :func:`catapult.optim.rules.preconditioner`. ``part`` maps a parameter-shaped tensor (a
    parameter, its state) to the operator's coordinates (an FSDP shard's local rows, or the
    whole tensor)."""
    check_preconditioned(optimizer)
    where = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            where[id(p)] = group
    from catapult.optim.thresholds import reference_group

    first = reference_group(optimizer)   # the threshold's group: the first that moves
    lr_ref = float(first["lr"])
    if lr_ref > 0:
        def relative_lr(group) -> float:
            return float(group["lr"]) / lr_ref
    else:  # a first group at lr 0: relative to the first group that moves (a frozen part listed
        # first), or while every group is at 0 (cosine decay to lr_final=0) the groups' lr_mult
        # ratios, as for SGD (group_lr_multipliers); lr_i / lr_0 was a ZeroDivisionError
        from catapult.optim.thresholds import group_lr_multipliers

        def relative_lr(group) -> float:
            return float(group_lr_multipliers(optimizer, group["params"][:1])[0]) if group["params"] else 1.0
    dtype, device = grad_flat.dtype, grad_flat.device
    r_scale, r_ref = None, 1.0
    if any(registry.rule_for(optimizer, g) == "radam" for g in optimizer.param_groups):
        from catapult.optim.thresholds import radam_rectification, radam_reference_step, radam_step_scales

        # each parameter's own rectification relative to the threshold's (torch counts each
        # parameter's steps apart; a lagging one was scaled by the largest count's r_t)
        r_scale = radam_step_scales(optimizer, params, skip={id(p) for n, p in zip(names, params) if n in unused}) or None
        if r_scale is not None:   # the threshold's r_t: (2 - lr wd)(1 + b1) / ((1 - b1) lr r_t)
            r_ref = radam_rectification(*radam_reference_step(optimizer))
    pieces, l2_pieces = [], []
    has_l2 = False
    shift_0 = float(_decay_shift(optimizer, first))   # the threshold's (weight_decay_shift), in every row moved
    offset = 0
    for k, (name, p) in enumerate(zip(names, params)):
        p_part = part(p.detach())
        n = p_part.numel()
        g = grad_flat[offset:offset + n].view(p_part.shape)
        offset += n
        group = where.get(id(p)) if name not in unused else None
        if group is None:  # not optimized, or unreached with .grad None (skipped_parameters): not moved -> P^-1 = 0 there
            pieces.append(torch.zeros(n, dtype=dtype, device=device))
            l2_pieces.append(torch.zeros(n, dtype=dtype, device=device))
            continue
        rule = registry.rule_for(optimizer, group)
        hp = registry.hyperparameters(group, optimizer=optimizer, param=p)
        wd = float(rules.l2_coefficient(rule, hp))
        coupled_l2 = wd != 0.0  # torch Adam feeds g + wd * theta into v and descends L + wd/2 |theta|^2
        # decoupled decay is a shift of the threshold (weight_decay_shift): a group decaying
        # otherwise than the first holds the difference here, lr-scaled as its step (RAdam's
        # over the threshold's r_t: its decay is not rectified, its threshold is divided by r_t)
        own = relative_lr(group) if scale_by_group_lr else 1.0
        extra = (float(_decay_shift(optimizer, group)) * own - shift_0) / r_ref if own else 0.0
        has_l2 = has_l2 or coupled_l2 or extra != 0.0
        state = optimizer.state.get(p, {})
        rule_state = None
        if "exp_avg_sq" in state:
            v_max = state.get("max_exp_avg_sq")
            rule_state = rules.State(
                step=torch_next_step(state["step"]) - 1,   # rules' t = step + 1: torch's own next count
                exp_avg_sq=[part(state["exp_avg_sq"].detach()).to(dtype)],
                max_exp_avg_sq=[None if v_max is None else part(v_max.detach()).to(dtype)])
        P = rules.preconditioner(rule, [g], rule_state, hp, params=[p_part.to(dtype)])
        if P is None:  # RAdam before rectification
            raise ValueError("RAdam's next step is un-rectified (momentum SGD): it applies no "
                             "pre-conditioner; measure the Hessian's sharpness "
                             "(catapult.optim.thresholds.radam_threshold says which applies)")
        inv = 1.0 / P[0]
        if r_scale is not None and r_scale[k] != 1.0:
            inv = inv * r_scale[k]
        if scale_by_group_lr:
            inv = inv * relative_lr(group)
        pieces.append(torch.sqrt(inv).reshape(-1))
        l2_piece = (inv * wd).reshape(-1) if coupled_l2 else torch.zeros(n, dtype=dtype, device=device)
        l2_pieces.append(l2_piece + extra if extra != 0.0 else l2_piece)
    return torch.cat(pieces), (torch.cat(l2_pieces) if has_l2 else None)


def check_step_optimizer(optimizer, owner: str) -> None:
    """A TypeError naming ``owner`` unless ``optimizer`` is one whose next step the spectrum's
    ``optimizer=`` reads (:func:`step_preconditioner`: torch's SGD, Adam, AdamW, RAdam or
    :class:`catapult.optim.GIAdam`), and the ValueError of a ``maximize=True`` group: before any
    product (RMSprop, a string, or a list holding an Adam was the registry's NotImplementedError,
    after the operator's graph had been built).

    >>> w = [torch.nn.Parameter(torch.zeros(2))]
    >>> check_step_optimizer(torch.optim.SGD(w, lr=0.1), "top_eigenpairs")
    >>> check_step_optimizer(torch.optim.RMSprop(w), "hessian_trace")
    Traceback (most recent call last):
    ...
    TypeError: hessian_trace optimizer= supports torch.optim.SGD, Adam, AdamW, RAdam and catapult.optim.GIAdam (the next step's pre-conditioner or per-group lrs), got RMSprop
    """
    supported = isinstance(optimizer, torch.optim.Optimizer)
    if supported:
        try:
            registry.spec_for(optimizer)
        except NotImplementedError:
            supported = False
    if not supported:
        raise TypeError(f"{owner} optimizer= supports torch.optim.SGD, Adam, AdamW, RAdam and catapult.optim.GIAdam "
                        f"(the next step's pre-conditioner or per-group lrs), got {type(optimizer).__name__}")
    registry.refuse_maximize(optimizer, owner)


def check_optimizer_holds(optimizer, params) -> None:
    """A ValueError unless ``optimizer`` holds at least one of ``params`` (the model's trainable
    parameters). A parameter it does not hold gets ``P^-1 = 0`` (its step does not move it), so
    the optimizer of another model, or of the model before a ``copy.deepcopy``, made the whole
    operator 0: a sharpness, spectrum and trace of exactly 0, with no error.

    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> check_optimizer_holds(torch.optim.SGD([w], lr=0.1), [torch.nn.Parameter(torch.zeros(2))])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the optimizer holds none of the model's trainable parameters (is it the optimizer ...
    """
    registry.refuse_maximize(optimizer, "the pre-conditioned sharpness")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in params):
        raise ValueError("the optimizer holds none of the model's trainable parameters (is it the optimizer "
                         "of another model, or of a copy?): its step moves none of them, so the "
                         "pre-conditioned operator would be 0")


def adam_preconditioner(model, optimizer, op, scale_by_group_lr: bool = False):
    """``(d, l2)``: the flat ``P^-1/2`` of the optimizer's next step and the coupled-L2 rows
    ``P^-1 wd`` (or None) at ``op``'s gradient (see :func:`~catapult.curvature.sharpness.preconditioned_sharpness`).

    Example (as in :func:`~catapult.curvature.sharpness.preconditioned_sharpness`: ``P = (0.2, 0.1)`` on Adam's first step):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [1.0]]))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1.0)
        >>> from catapult.curvature.sharpness import build_operator
        >>> d, l2 = adam_preconditioner(model, opt, build_operator(model, torch.nn.MSELoss(), batch))
        >>> (d ** 2).round(decimals=3), l2
        (tensor([ 5., 10.]), None)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    check_optimizer_holds(optimizer, params)
    grad = op.gradient()
    unused = skipped_parameters(op, params, grad)
    with torch.no_grad():
        return _adam_preconditioner(optimizer, grad, op.names, params, scale_by_group_lr,
                                    part=getattr(op, "part", sharded.full_tensor), unused=unused)


def skipped_parameters(op, params, grad: torch.Tensor | None = None) -> set[str]:
    """The names of the trainable parameters (``params``, in ``op.names``' order) torch's next step skips:
    those ``op``'s loss does not reach (:meth:`HessianOperator.unused_parameters`; across processes, those
    reached on no rank's shard) whose ``.grad`` is None now. torch's step skips a parameter by its ``.grad``
    alone: a ``.grad`` of zeros (``zero_grad(set_to_none=False)`` after a pass that reached it, or zeros
    written by other code) is stepped (Adam: its count, its moments, coupled L2 ``wd theta``; SGD: its
    decay), so its rows stay. Read at the call: measure where the step reads it, after ``backward`` and
    before ``step`` (as :class:`~catapult.curvature.SharpnessTracker` and ``catapult train`` do). Asked only
    where a parameter's gradient ``grad`` (``op``'s) is 0 throughout; none for operators that do not tell
    (Gauss-Newton's). A skipped parameter's decay rows were counted (``wd / eps`` under Adam's coupled L2 at
    a zero entry, beside a step whose sharpness was 1e-5 of that); a stepped one's were left out (49.86
    for the step's 590.27, tests/test_unused_parameter_zero_grads.py)."""
    find, sizes = getattr(op, "unused_parameters", None), getattr(op, "sizes", None)
    if find is None or sizes is None:
        return set()
    grad = op.gradient() if grad is None else grad
    # (across processes: the union's gradient, alike on every rank, so every rank asks, or none)
    if not any(not bool(part.any()) for part in torch.split(grad, sizes)):
        return set()
    unused = find()
    return {name for name, p, skip in zip(op.names, params, step_skips(params, [name not in unused for name in op.names]))
            if skip}


def step_skips(params, reached) -> list[bool]:
    """Whether torch's next step skips each of ``params``: one the loss does not reach (``reached[i]``
    false) whose ``.grad`` is None now; a ``.grad`` of zeros is stepped (its decay, its count, its moments),
    as is every reached one (the rule of :func:`skipped_parameters`, and of :func:`catapult.critical_lr`'s
    direction: a zero-filled ``.grad`` decays by its coupled L2 ``wd theta``)."""
    return [not r and p.grad is None for p, r in zip(params, reached)]


def step_preconditioner(model, optimizer, op, scale_by_group_lr: bool = False):
    """``(d, l2)`` of ``optimizer``'s next step for :class:`PreconditionedOperator`: an
    Adam-family optimizer's :func:`adam_preconditioner`; for SGD (no pre-conditioner, ``P = I``)
    ``d = 1`` on the parameters it holds (0 elsewhere), times ``M^1/2`` with
    ``scale_by_group_lr`` (``M = diag(lr_i / lr_0)``,
    :func:`catapult.optim.thresholds.group_lr_multipliers`): the operator ``M^1/2 H M^1/2`` of
    the ``lr_scaled`` sharpness. ``l2`` is None for SGD whose moving groups share one weight decay
    (the threshold's shift holds it: the sharpness is the loss's), else the rows ``m_i wd_i - wd_0``
    (:func:`catapult.optim.thresholds.weight_decay_shift`; likewise the Adam family's decoupled decay,
    ``(1 + b1) / (1 - b1)`` times that; RAdam's, rectified, also over the threshold's ``r_t``). RAdam whose next step is un-rectified
    (EMA-momentum SGD, no pre-conditioner) gets SGD's ``(d, l2)``, its decay (coupled, or decoupled
    as ``wd (1 + b1) / (1 - b1)``) in the rows as SGD's.

    Example (SGD, the second group at half the first group's lr: ``d^2 = (1, 0.5)``):
        >>> model = torch.nn.Linear(2, 1, bias=True)
        >>> opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.2},
        ...                        {"params": [model.bias], "lr": 0.1}])
        >>> batch = (torch.eye(2), torch.zeros(2, 1))
        >>> from catapult.curvature.sharpness import build_operator
        >>> d, l2 = step_preconditioner(model, opt, build_operator(model, torch.nn.MSELoss(), batch), True)
        >>> (d ** 2).round(decimals=4).tolist(), l2
        ([1.0, 1.0, 0.5], None)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if registry.spec_for(optimizer).family != "sgd" and not _radam_unrectified(optimizer, params, op):
        return adam_preconditioner(model, optimizer, op, scale_by_group_lr)
    from catapult.optim.thresholds import group_lr_multipliers

    check_optimizer_holds(optimizer, params)
    m = group_lr_multipliers(optimizer, params)
    if not scale_by_group_lr:
        m = (m > 0).to(m.dtype)
    l2 = _sgd_decay_rows(optimizer, params, m)
    if l2 is not None and (unused := skipped_parameters(op, params)):   # their decay rows: the step skips them
        m = torch.cat([torch.zeros(p.numel(), dtype=m.dtype) if name in unused else part
                       for name, p, part in zip(op.names, params, torch.split(m, [p.numel() for p in params]))])
        l2 = _sgd_decay_rows(optimizer, params, m)
    m = m.sqrt().to(device=op.device, dtype=op.dtype)
    local = getattr(op, "local", False)       # split vectors: this rank's rows
    if l2 is not None:
        l2 = l2.to(device=op.device, dtype=op.dtype)
        l2 = op.localize(l2) if local else l2
    return (op.localize(m) if local else m), l2


def _radam_unrectified(optimizer, params, op=None) -> bool:
    """Whether ``optimizer`` is RAdam whose next step is un-rectified for ``params`` (EMA-momentum
    SGD: no pre-conditioner, so its operator is SGD's ``M^1/2 (H + W) M^1/2``); a step rectified
    for some parameters only is refused (:func:`~catapult.optim.thresholds.radam_step_scales`)."""
    if registry.spec_for(optimizer).rule != "radam":
        return False
    from catapult.optim.thresholds import radam_step_scales

    unused = set() if op is None else skipped_parameters(op, params)   # (not stepped: their count is not the step's)
    return not radam_step_scales(optimizer, params, skip={id(p) for n, p in zip(getattr(op, "names", ()), params)
                                                          if n in unused})


def _decay_shift(optimizer, group, operator: str | None = None) -> float:
    """:func:`~catapult.optim.thresholds.weight_decay_shift` of one group (compared with the
    operator :func:`step_preconditioner` builds for ``optimizer``: ``operator``, by default the
    Hessian's for SGD and the pre-conditioned one otherwise)."""
    from catapult.optim.thresholds import weight_decay_shift

    rule = registry.rule_for(optimizer, group)
    if operator is None:
        operator = "hessian" if rule == "sgd" else "preconditioned"
    return weight_decay_shift(rule, registry.hyperparameters(group), operator=operator)


def _sgd_decay_rows(optimizer, params, m: torch.Tensor) -> torch.Tensor | None:
    """SGD's coupled L2 that the threshold's shift (the first group's ``wd_0``) leaves out: the step's
    operator is ``M^1/2 (H + W) M^1/2`` with ``W = diag(wd_i)``, so ``m_i wd_i - wd_0`` on the rows the
    step moves (``M^1/2 H M^1/2`` plus it, compared with ``2 / lr_0 - wd_0``, is exact); None where
    that is 0 everywhere (one decay, one lr: the loss's own sharpness)."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    # (RAdam's un-rectified step is SGD's: its decay shifts the Hessian's threshold, coupled or not)
    from catapult.optim.thresholds import reference_group

    wd_0 = float(_decay_shift(optimizer, reference_group(optimizer), "hessian"))
    wd = torch.cat([torch.full((p.numel(),), float(_decay_shift(optimizer, where[id(p)], "hessian"))
                               if id(p) in where else 0.0,
                               dtype=torch.float64) for p in params])
    rows = torch.where(m > 0, m * wd - wd_0, torch.zeros_like(m))
    return rows if bool((rows != 0).any()) else None


class PreconditionedOperator:
    """``u -> d * (H (d * u)) + l2 * u``: the symmetric ``P^-1/2 (H + wd I) P^-1/2`` from a
    Hessian operator ``op`` and :func:`adam_preconditioner`'s ``(d, l2)``.

    Example (``H = diag(4, 1)``, ``d = (1, 2)``: ``d H d = diag(4, 4)``):
        >>> from catapult.curvature.sharpness import build_operator
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> H = build_operator(model, torch.nn.MSELoss(), batch)
        >>> PreconditionedOperator(H, torch.tensor([1.0, 2.0]), None)(torch.tensor([1.0, 1.0]))
        tensor([4., 4.])
    """

    def __init__(self, op, d: torch.Tensor, l2: torch.Tensor | None):
        self.op, self.d, self.l2 = op, d, l2
        self.numel, self.dtype, self.device = op.numel, op.dtype, op.device

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        out = self.op(self.d * u).mul_(self.d)
        if self.l2 is not None:
            out.addcmul_(self.l2, u)
        return out
