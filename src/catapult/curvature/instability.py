"""The instability threshold of an optimizer's next steps: the sharpness above which they diverge on a quadratic,
for SGD (heavy-ball, Nesterov, dampening) and the Adam family (RAdam's rectified steps included), lowered by weight
decay, read from the param group that moves.

Split from :mod:`catapult.curvature.sharpness`, which re-exports :func:`instability_threshold` (also
``catapult.instability_threshold``); the rules' formulas are :mod:`catapult.optim.rules`'.
"""
from __future__ import annotations

import torch

from catapult.arguments import as_real, check_real
from catapult.optim import registry, rules

__all__ = ["instability_threshold"]


def instability_threshold(optimizer: torch.optim.Optimizer, lr: float | None = None) -> float:
    """The sharpness above which the optimizer's next steps become unstable, for learning rate lr.

    From the linear stability of each update rule on a quadratic with curvature ``lambda``:

    * SGD without momentum (gradient descent): ``2 / lr``.
    * SGD with heavy-ball momentum ``b`` (torch's ``buf = b*buf + (1-d)*g``, dampening ``d``,
      usually 0): ``(2 + 2b) / ((1 - d) lr)``; with ``nesterov=True``:
      ``(2 + 2b) / ((1 + 2b) lr)``.
    * Adam family (any optimizer whose param groups have ``"betas"``: Adam, AdamW, GIAdam,
      RAdam, Adamax, ...), compared with the *pre-conditioned* sharpness:
      ``(2 + 2 b1) / ((1 - b1) lr)`` (= 38/lr for b1 = 0.9). ``torch.optim.NAdam`` is refused:
      its Nesterov step ``b1 m + (1 - b1) g`` has ``(2 + 2 b1) / ((1 + 2 b1)(1 - b1) lr)``
      (2.8x lower at b1 = 0.9) once ``mu_t`` reaches ``b1``, and a step-dependent one before.
      ``torch.optim.RAdam``: the threshold of its next step ``t`` (one more than the largest step
      count in its state of the parameters that require grad:
      :func:`catapult.optim.thresholds.radam_reference_step`): that formula while ``t`` is un-rectified (EMA-momentum SGD, compared with the
      Hessian's sharpness), and ``(2 + 2 b1) / ((1 - b1) r_t lr)`` once it is rectified, since
      a rectified step scales the update by ``r_t`` (compared with the pre-conditioned
      sharpness): :func:`catapult.optim.thresholds.radam_threshold` (``lr, betas, t``), as the
      training engine uses.

    ``lr`` defaults to the first param group's current ``lr`` (the first that moves, past a part frozen by lr 0 or
    ``requires_grad=False``: :func:`~catapult.optim.thresholds.reference_group`); ``momentum`` (with ``dampening``,
    ``nesterov``), ``b1`` and weight decay are that group's, and must be the same in every other group that moves (has parameters and an lr > 0): groups that differ there have
    different thresholds, and a ValueError names them. With per-group multipliers (``group["lr_mult"]``, as set by
    :func:`catapult.param_groups`) the groups have different lrs: pass the lr you mean, or use
    ``preconditioned_sharpness(..., scale_by_group_lr=True)``, which folds each group's
    ``lr / lr_first_group`` into the operator so it is compared with this threshold directly.

    Weight decay ``wd`` (that reference group's) lowers the threshold so that the sharpness compared
    stays the loss's: SGD's (coupled L2, the step's curvature ``H + wd I``) by ``wd``, i.e.
    ``lambda_max(H) + wd < (2 + 2b) / lr``; decoupled decay (AdamW, GI-Adam) by ``wd (1 + b1) /
    (1 - b1)``; Adam's coupled L2 not at all, since :func:`preconditioned_sharpness` holds it
    (``P^-1 (H + wd I)``). See :func:`catapult.optim.thresholds.weight_decay_shift`. Where the
    groups' decays differ, the measured operators hold the difference from that group's
    (the lr-scaled and pre-conditioned ones; the plain Hessian's sharpness cannot).

    ``torch.optim.Adamax`` takes Adam's formula with its own pre-conditioner ``P = u`` (the
    running infinity norm ``exp_inf``, not ``sqrt(v) + eps``), which ``preconditioned_sharpness``
    does not build (it refuses Adamax): compare with ``P^-1/2 H P^-1/2`` built from
    ``optimizer.state[p]["exp_inf"]`` yourself.

    Raises:
        TypeError: for an optimizer of another kind (the message names it).
        ValueError: for an lr that is not a finite number > 0, or a param group with
            ``maximize=True`` (its step ascends the loss: the threshold bounds the sharpness of
            ``-loss_fn``; use ``maximize=False`` on the negated loss, as for :func:`catapult.critical_lr`).

    Example:
        >>> import torch
        >>> w = [torch.nn.Parameter(torch.zeros(2))]
        >>> instability_threshold(torch.optim.SGD(w, lr=0.1))                # 2 / lr
        20.0
        >>> round(instability_threshold(torch.optim.SGD(w, lr=0.1, momentum=0.9)), 6)
        38.0
        >>> round(instability_threshold(torch.optim.Adam(w, lr=0.1)), 6)      # 38 / lr
        380.0
        >>> instability_threshold(torch.optim.SGD(w, lr=0.1, weight_decay=0.5))   # 2 / lr - wd
        19.5
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not optimizer.param_groups:
        raise ValueError("optimizer has no param groups")
    # an SGD subclass whose step is its own (decoupled decay) got SGD's 2 / lr - wd
    registry.refuse_overridden_step(optimizer, "instability_threshold")
    from catapult.optim.thresholds import reference_group   # (lazy: the first sharpness call's imports)
    group = reference_group(optimizer)   # the first group that moves (a frozen part listed first: not it)
    # lr=inf gave 0.0, lr="0.1" 20.0 and lr=True 2.0
    lr = check_real("instability_threshold", "lr", group["lr"] if lr is None else lr, low=0.0, low_open=True)
    if isinstance(optimizer, torch.optim.NAdam):
        raise TypeError("instability_threshold: torch.optim.NAdam is not supported: its Nesterov "
                        "momentum mu_t changes with the step, so Adam's (2 + 2 b1) / ((1 - b1) lr) "
                        "does not apply (it is (2 + 2 b1) / ((1 + 2 b1)(1 - b1) lr) once mu_t = b1)")
    # a maximize step descends -loss_fn: its threshold bounds the sharpness of -loss_fn, not of loss_fn
    # (SGD gave 2 / lr, Adam 38 / lr): refused as critical_lr and preconditioned_sharpness refuse it
    registry.refuse_maximize(optimizer, "instability_threshold")
    _check_groups_share_the_rule(optimizer)
    wd = check_real("instability_threshold", "weight_decay", group.get("weight_decay", 0.0), low=0.0)
    if isinstance(optimizer, torch.optim.RAdam):
        from catapult.optim.thresholds import radam_threshold

        from catapult.optim.thresholds import radam_reference_step

        # the largest count of what can move (a frozen part's counts are not the step's)
        return float(radam_threshold(lr, [float(b) for b in group["betas"]], radam_reference_step(optimizer)[0],
                                     weight_decay=wd, decoupled_weight_decay=group.get("decoupled_weight_decay", False))[1])
    if "betas" in group:
        betas = [float(b) for b in group["betas"]]
        return float(rules.threshold(_adam_rule(optimizer, group, wd), {"lr": lr, "betas": betas, "weight_decay": wd}))
    if isinstance(optimizer, torch.optim.SGD):
        return float(rules.threshold("sgd", {
            "lr": lr, "momentum": float(group.get("momentum", 0.0)), "weight_decay": wd,
            "dampening": float(group.get("dampening", 0.0)), "nesterov": group.get("nesterov", False)}))
    raise TypeError(f"instability_threshold: unsupported optimizer {type(optimizer).__name__}; "
                    "supported: torch.optim.SGD (with or without momentum) and Adam-family "
                    "optimizers (param groups with 'betas')")


def _adam_rule(optimizer: torch.optim.Optimizer, group, wd: float) -> str:
    """The rule whose threshold an Adam-family optimizer takes: its registry rule (``"adamw"`` for
    decoupled decay); ``torch.optim.Adamax`` (coupled L2, held by the operator ``P^-1 (H + wd I)``
    one builds for it) and any optimizer without weight decay, ``"adam"``. A ValueError for another
    optimizer with a weight decay: whether it is coupled decides the threshold."""
    try:
        return registry.rule_for(optimizer, group)
    except NotImplementedError:
        if wd == 0.0 or isinstance(optimizer, torch.optim.Adamax):
            return "adam"
        raise ValueError(f"instability_threshold: {type(optimizer).__name__} has weight_decay={wd!r}, and whether "
                         "it is coupled (L2 in the gradient) or decoupled decides the threshold; supported with "
                         "weight decay: SGD, Adam, AdamW, RAdam, Adamax and catapult.optim.GIAdam") from None


def _check_groups_share_the_rule(optimizer: torch.optim.Optimizer) -> None:
    """ValueError when a param group that moves (:func:`catapult.optim.thresholds.group_moves`: a
    trainable parameter, lr > 0) differs from the first group (whose rule the threshold takes) in
    what the threshold reads besides the lr (Adam's ``b1``; SGD's momentum, dampening, nesterov):
    the first group's threshold is not that group's, and no single number bounds both. A group
    frozen by ``requires_grad=False`` is not compared (a body frozen at another ``b1`` refused the
    head's step, which its threshold bounds)."""
    from catapult.optim.thresholds import group_moves, reference_group

    def rule(group):
        if "betas" in group:
            return {"betas[0]": as_real(group["betas"][0])}
        return {key: (bool(group.get(key, False)) if key == "nesterov" else as_real(group.get(key, 0.0)))
                for key in ("momentum", "dampening", "nesterov")}

    ref = reference_group(optimizer)
    first, at = rule(ref), next(i for i, g in enumerate(optimizer.param_groups) if g is ref)   # the threshold's
    for i, group in enumerate(optimizer.param_groups[at + 1:], start=at + 1):
        if not group.get("params") or as_real(group.get("lr", 0.0)) == 0.0 or not group_moves(group):
            continue
        for key, value in rule(group).items():
            if value != first[key]:
                raise ValueError(
                    f"instability_threshold: param group {i} has {key}={value!r} and param group "
                    f"{at} {key}={first[key]!r}: their thresholds differ and no single one "
                    "applies; measure each group's parameters with an optimizer of that group alone")
