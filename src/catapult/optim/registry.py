"""The one table of optimizers: name -> class, family, sharpness kind, update rule, threshold.

The training engine's builders, ``eval.sharpness_kind: auto`` and the curvature/critical-lr
code read this table. Adding an optimizer is an entry here and its rule in
:mod:`catapult.optim.rules`, plus the lists the layers below optim keep for themselves (they
cannot import this table): ``OptimizerName`` and ``PRECONDITIONED_OPTIMIZERS`` in
:mod:`catapult.config.sections` and the family in
:data:`catapult.param_rules.OPTIMIZER_FAMILIES`; the batched sweep engine's per-rule tables
(``_KEYS`` in :mod:`catapult.sweep.batched_optim`,
:data:`catapult.sweep.batched_memory.STATE_TENSORS`) name what it can stack.

``preconditioned``: whether the optimizer's sharpness is the pre-conditioned
``lambda_max(P^-1 H)`` (Adam, AdamW, GI-Adam). RAdam is not: its first steps are
un-preconditioned momentum SGD and its later steps rescale the Adam step by a rectification
factor, so its natural curvature is the Hessian's sharpness.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import torch

from catapult.optim import rules
from catapult.optim.gi_adam import GIAdam
from catapult.parametrize import optimizer_family

__all__ = ["OptimizerSpec", "get", "names", "preconditioned_names", "rule_for", "spec_for",
           "hyperparameters", "refuse_maximize", "refuse_overridden_step"]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer.

    Attributes:
        name: config name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"radam"``, ``"gi-adam"``).
        cls: the torch.optim-compatible class.
        family: ``"sgd"`` or ``"adam"`` (which ``catapult.param_groups`` lr rules apply).
        preconditioned: its sharpness is the pre-conditioned one.
        rule: its name in :mod:`catapult.optim.rules`.
        threshold: ``hp -> instability threshold`` (``rules.threshold`` for this rule).
        aliases: other accepted spellings of ``name``.

    Example:
        >>> spec = get("sgd")
        >>> spec.family, spec.preconditioned, spec.threshold({"lr": 0.1})
        ('sgd', False, 20.0)
        >>> type(spec.build([torch.nn.Parameter(torch.zeros(2))], lr=0.1)).__name__
        'SGD'
    """

    name: str
    cls: type
    family: str
    preconditioned: bool
    rule: str
    threshold: Callable[[Mapping[str, Any]], Any]
    aliases: tuple[str, ...] = ()

    def build(self, params, **options) -> torch.optim.Optimizer:
        """``cls(params, **options)``."""
        return self.cls(params, **options)


def _spec(name, cls, preconditioned, aliases=()) -> OptimizerSpec:
    # the family is param_groups' (catapult.parametrize, a layer below): one table of lr rules
    return OptimizerSpec(name, cls, optimizer_family(name), preconditioned, name,
                         partial(rules.threshold, name), aliases)


_SPECS: tuple[OptimizerSpec, ...] = (
    _spec("sgd", torch.optim.SGD, False),
    _spec("adam", torch.optim.Adam, True),
    _spec("adamw", torch.optim.AdamW, True),
    _spec("radam", torch.optim.RAdam, False),
    _spec("gi-adam", GIAdam, True, aliases=("giadam", "gi_adam")),
)
_BY_NAME = {s.name: s for s in _SPECS} | {a: s for s in _SPECS for a in s.aliases}


def names() -> tuple[str, ...]:
    """Canonical optimizer names, in table order.

    Example:
        >>> names()
        ('sgd', 'adam', 'adamw', 'radam', 'gi-adam')
    """
    return tuple(s.name for s in _SPECS)


def preconditioned_names() -> tuple[str, ...]:
    """Names whose sharpness is pre-conditioned: ``("adam", "adamw", "gi-adam")``.

    Example:
        >>> preconditioned_names()
        ('adam', 'adamw', 'gi-adam')
    """
    return tuple(s.name for s in _SPECS if s.preconditioned)


def get(name: str) -> OptimizerSpec:
    """The entry for ``name`` (or an alias such as ``"giadam"``).

    Raises:
        KeyError: unknown name (the message lists the known ones).

    Example:
        >>> get("giadam").name, get("giadam").cls.__name__
        ('gi-adam', 'GIAdam')
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown optimizer {name!r}; known: {', '.join(names())}") from None


def spec_for(optimizer: torch.optim.Optimizer) -> OptimizerSpec:
    """The entry of an optimizer instance (AdamW before Adam: it is a subclass).

    A subclass of a table class is that class's entry only while its ``step`` is the table
    class's (it may add methods and attributes): one that overrides ``step`` is refused
    (:func:`refuse_overridden_step`), unless the class declares that its step is the update of
    an entry, ``catapult_optimizer = "<name>"`` in its own body (a step that only logs, say).

    Raises:
        NotImplementedError: for a class not in the table (the message names it).
        TypeError: for a subclass whose ``step`` overrides the table class's (the message names
            both and the declaration).

    Example:
        >>> w = [torch.nn.Parameter(torch.zeros(2))]
        >>> spec_for(torch.optim.AdamW(w)).name, spec_for(torch.optim.Adam(w)).name
        ('adamw', 'adam')
        >>> class Logged(torch.optim.SGD):
        ...     catapult_optimizer = "sgd"          # its step is SGD's update (it only counts)
        ...     def step(self, closure=None):
        ...         self.calls = getattr(self, "calls", 0) + 1
        ...         return super().step(closure)
        >>> spec_for(Logged(w, lr=0.1)).name
        'sgd'
    """
    for cls in (GIAdam, torch.optim.AdamW, torch.optim.Adam, torch.optim.RAdam, torch.optim.SGD):
        if isinstance(optimizer, cls):
            refuse_overridden_step(optimizer)
            declared = _declaring_class(type(optimizer))
            if declared is not None:
                return _BY_NAME[declared.__dict__["catapult_optimizer"]]
            return next(s for s in _SPECS if s.cls is cls)
    raise NotImplementedError(
        f"no update rule for {type(optimizer).__name__}; supported: torch.optim.SGD, Adam, AdamW, "
        "RAdam and catapult.optim.GIAdam")


def _step_function(cls: type):
    """The function under ``cls.step``: torch wraps a class's step in its profile hook (on the
    first instance, in that class's own dict) and ``torch.optim``'s own steps in a grad-mode
    decorator, both with ``functools.wraps``."""
    return inspect.unwrap(cls.step)


def _declaring_class(cls: type) -> type | None:
    """The nearest class in ``cls``'s MRO whose own body sets ``catapult_optimizer``."""
    return next((c for c in cls.__mro__ if "catapult_optimizer" in c.__dict__), None)


def refuse_overridden_step(optimizer: torch.optim.Optimizer, where: str = "") -> None:
    """A TypeError when ``optimizer`` is an instance of a subclass of a table class (SGD, Adam,
    AdamW, RAdam, GIAdam) whose ``step`` is not that class's: its thresholds, critical-lr
    direction and pre-conditioner are the table class's update, which that step may not follow
    (an SGD subclass with decoupled weight decay got SGD's). A subclass that declares, in its own
    body, ``catapult_optimizer = "<name>"`` (a registry name whose class it subclasses) is taken
    as that entry's update, if no class below it overrides ``step`` again. A subclass that keeps
    the step (adding methods or attributes) passes; so does any other class (not this check's).

    >>> w = [torch.nn.Parameter(torch.zeros(2))]
    >>> class SGDW(torch.optim.SGD):
    ...     def step(self, closure=None):
    ...         return super().step(closure)
    >>> refuse_overridden_step(torch.optim.SGD(w, lr=0.1), "critical_lr")
    >>> refuse_overridden_step(SGDW(w, lr=0.1), "critical_lr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: critical_lr: SGDW overrides the step of torch.optim.SGD: ...
    """
    cls = type(optimizer)
    base = next((c for c in (GIAdam, torch.optim.AdamW, torch.optim.Adam, torch.optim.RAdam,
                             torch.optim.SGD) if isinstance(optimizer, c)), None)
    if base is None or cls is base:
        return
    declared = _declaring_class(cls)
    prefix = f"{where}: " if where else ""
    if declared is not None:
        name = declared.__dict__["catapult_optimizer"]
        spec = _BY_NAME.get(name) if isinstance(name, str) else None
        if spec is None or not issubclass(declared, spec.cls):
            raise TypeError(f"{prefix}{declared.__name__}.catapult_optimizer = {name!r} names no entry that "
                            f"{declared.__name__} subclasses; known: {', '.join(names())}")
        if _step_function(cls) is _step_function(declared):
            return
        base = declared
    elif _step_function(cls) is _step_function(base):
        return
    # the class that wrote it: the furthest up with that function (torch's hook copies it into each
    # instantiated subclass's own dict)
    owner = [c for c in cls.__mro__ if "step" in c.__dict__ and _step_function(c) is _step_function(cls)][-1]
    where_from = "" if owner is cls else f" (in {owner.__name__})"
    base_name = base.__name__ if base is declared else f"{base.__module__.rsplit('.', 1)[0]}.{base.__name__}"
    raise TypeError(
        f"{prefix}{cls.__name__} overrides the step of {base_name}{where_from}: the thresholds, critical-lr "
        f"direction and pre-conditioner catapult has are {base.__name__}'s update, which this step may not "
        f"follow. If its update is {base.__name__}'s (the step only logs or counts), declare it in the class "
        f"body: catapult_optimizer = \"<name>\" (one of {', '.join(names())}); otherwise use {base.__name__} "
        "itself (or give no optimizer where that is optional)")


def rule_for(optimizer: torch.optim.Optimizer, group: Mapping[str, Any] | None = None) -> str:
    """The :mod:`~catapult.optim.rules` rule one param group of ``optimizer`` follows: an Adam
    group with ``decoupled_weight_decay=True`` follows ``"adamw"``.

    Example:
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
        >>> group = {**opt.param_groups[0], "decoupled_weight_decay": True}   # (no such flag in torch 2.2)
        >>> rule_for(opt), rule_for(opt, group)
        ('adam', 'adamw')
    """
    rule = spec_for(optimizer).rule
    if rule == "adam" and group is not None and group.get("decoupled_weight_decay", False):
        return "adamw"
    return rule


def hyperparameters(group: Mapping[str, Any], *, optimizer: torch.optim.Optimizer | None = None,
                    param: torch.Tensor | None = None) -> dict[str, Any]:
    """A torch param group as the ``hp`` mapping of :mod:`~catapult.optim.rules` (all keys
    but ``params``). For a :class:`GIAdam` ``optimizer`` and one ``param`` of the group, ``seed``
    becomes that parameter's ``v0="random"`` seed (:meth:`GIAdam.v0_seed`).

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
        >>> hp = hyperparameters(opt.param_groups[0])
        >>> hp["lr"], hp["momentum"], "params" in hp, round(rules.threshold("sgd", hp), 6)
        (0.1, 0.9, False, 38.0)
    """
    hp = {k: v for k, v in group.items() if k != "params"}
    if isinstance(optimizer, GIAdam) and param is not None:
        hp["seed"] = optimizer.v0_seed(param, group)
    return hp


def refuse_maximize(optimizer: torch.optim.Optimizer, where: str) -> None:
    """A ValueError naming the first param group (with parameters) that has ``maximize=True``.

    Such a step ascends ``loss_fn``: its critical lr is where ``loss_fn`` falls, and its
    curvature that of ``-loss_fn``, while ``critical_lr`` and the pre-conditioned operators
    measure the descent of ``loss_fn`` (the critical lr came out ``lr_start``, the loss rising at
    once, and the pre-conditioned sharpness that of ``+H``). The same step is
    ``maximize=False`` on ``-loss_fn`` (the same state: torch negates the gradient first).

    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> refuse_maximize(torch.optim.SGD([w], lr=0.1), "critical_lr")
    >>> refuse_maximize(torch.optim.Adam([w], maximize=True), "critical_lr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: critical_lr: param group 0 has maximize=True: ...
    """
    for i, group in enumerate(optimizer.param_groups):
        if group.get("maximize", False) and group.get("params"):
            raise ValueError(
                f"{where}: param group {i} has maximize=True: its step ascends loss_fn, and {where} "
                "measures the descent of loss_fn; set the groups' maximize to False and pass "
                "lambda out, y: -loss_fn(out, y) (the same step, the same optimizer state)")
