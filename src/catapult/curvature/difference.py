"""Hessian-vector products from differences of gradients, checked for kinks: the step rule and
the test shared by :class:`~catapult.curvature.HessianOperator` (``hvp="finite_difference"``)
and :class:`~catapult.curvature.sharded.ShardedHessianOperator` (FSDP2 models)::

    H v ~ (g(theta + h u) - g(theta - h u)) / (2 h) * ||v||,   u = v / ||v||,  h = eps^(1/3)

``h = eps^(1/3)`` of the dtype balances the ``O(h^2)`` truncation against the ``O(eps / h)``
rounding. That balance assumes a smooth loss. Where the loss has kinks (ReLU), a step that
crosses one makes the difference describe no Hessian, and Lanczos finds exactly the directions
where that happens (a ReLU MLP 32-256-256-10 in float32: a sharpness of 2.34 against the exact
0.83, reported as converged, before this check). Each product therefore also compares the
forward and backward differences, which cost nothing more than ``g(theta)``, computed once::

    gap = ||g(theta + h u) + g(theta - h u) - 2 g(theta)|| / ||g(theta + h u) - g(theta)||

``O(h)`` where the loss is smooth, ``O(1)`` across a kink. A second difference no larger than
the gradients' own rounding (:func:`rounding_level`) counts as no gap: along a direction where
``H u`` is 0 (a bias that a BatchNorm cancels) both differences are rounding, and a kink that
moves the gradient by no more than rounding does cannot spoil the product. A product whose ``gap`` exceeds
:data:`MAX_GAP` is taken again with a :data:`STEP_SHRINK` times smaller step, :data:`STEPS`
steps in all; if none passes, :func:`checked_difference` raises a ValueError saying so. In
float64 the smaller steps usually avoid the kinks; in float32 their rounding swamps them. A
difference that is not finite (a nan loss or parameters) is accepted as it is: the solvers report
it as a diverged model's nan, not as a kink.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

from catapult.curvature.krylov import operator_chain

__all__ = ["UnreliableDifferenceError", "MAX_GAP", "STEPS", "STEP_SHRINK", "ROUNDING_ULPS", "central_step", "rounding_level",
           "relative_gap", "checked_difference", "difference_operator", "scaled_step", "spectral_norm_training",
           "refuse_spectral_norm_differences", "refuse_renormed_differences", "RENORM_STEPS"]

class UnreliableDifferenceError(ValueError):
    """No step of :func:`checked_difference` gave a finite-difference product whose forward and
    backward differences agree (the steps cross kinks of the loss): the measurement cannot be
    made from differences. A ``ValueError``, as it was; ``catapult`` commands report it in one line.

    Example (``|x|``'s gradient, ``sign(x)``, at its kink):
        >>> def product_at(h):
        ...     return 1.0, lambda accepted: 0.0      # a gap of 1 at every step
        >>> try:
        ...     checked_difference(product_at, 1e-3)
        ... except UnreliableDifferenceError as err:
        ...     print(str(err)[:59])
        finite-difference Hessian-vector products of this model are
    """


#: A product is accepted where its forward and backward differences differ by at most this much
#: of the forward one. Measured on small GPTs: a smooth loss gives O(h) (float64 <= 2e-4; float32
#: at ``h = eps^(1/3)`` 6e-3 .. 0.12), a step across a ReLU kink O(1) (float32: 0.28 .. 1.8).
MAX_GAP = 0.1
#: Steps tried per product, each ``STEP_SHRINK`` times smaller than the one before.
STEPS, STEP_SHRINK = 3, 16.0


def central_step(eps: float) -> float:
    """The first step of a central difference, ``h = eps^(1/3)`` (``eps`` the rounding unit).

    >>> round(central_step(2.0 ** -23), 5)   # float32
    0.00492
    """
    return eps ** (1.0 / 3.0)


#: The rounding of a computed gradient, in units of ``eps * ||g||``: measured 0.5 (float64) and 2
#: (float32) for the second difference of a tanh + BatchNorm MLP along a direction with ``H u = 0``;
#: a step across a ReLU kink moves a gradient by orders of magnitude more.
ROUNDING_ULPS = 64.0


def rounding_level(eps: float, gradient_norm: float) -> float:
    """``ROUNDING_ULPS * eps * ||g||``: a second difference up to this size is the gradients'
    rounding, not a kink (:func:`relative_gap`'s ``noise``).

    >>> rounding_level(2.0 ** -52, 1.0) < 1e-13
    True
    """
    return ROUNDING_ULPS * eps * gradient_norm


def relative_gap(second: float, first: float, noise: float = 0.0) -> float:
    """``second / first``: the norm of the second difference ``g+ + g- - 2 g0`` over the norm of
    the first ``g+ - g0`` (0 where both are 0, or where ``second`` is within the rounding
    ``noise``; infinite where only the first is 0; nan where either is not finite).

    >>> relative_gap(0.5, 10.0), relative_gap(0.0, 0.0), relative_gap(1.0, 0.0)
    (0.05, 0.0, inf)
    >>> relative_gap(3e-16, 1e-16, noise=1e-13)   # both differences are rounding
    0.0
    """
    if not (math.isfinite(second) and math.isfinite(first)):
        return math.nan
    if second <= noise:
        return 0.0
    if first > 0:
        return second / first
    return 0.0 if second == 0 else math.inf


def checked_difference(product_at: Callable, first_step: float, *, subject: str = "this model"):
    """The first of the steps ``h, h / 16, h / 256`` whose difference passes the kink test.

    ``product_at(h)`` takes the differences at step ``h`` and returns ``(gap, finish)``: the
    :func:`relative_gap` of its differences, and ``finish(accepted)``, called once, which returns
    the product when ``gap <= MAX_GAP`` or is nan (differences that are not finite: the product
    is a diverged model's nan, for the solver to report) and otherwise undoes whatever
    ``product_at`` left behind (a solver's vector it added into). Returns
    ``(product, gap, retries)``; raises a ValueError naming the gaps when no step passes.

    Example: ``g(x) = 3 x^2`` (the gradient of ``x^3``) has the Hessian ``6 x``; ``g(x) = sign(x)``
    (the gradient of ``|x|``) has a kink at 0, which the first step ``1e-3`` crosses from
    ``x = 1e-4`` and the second (``6.25e-5``) does not:

    >>> def differences(g, x):
    ...     def product_at(h):
    ...         plus, minus, base = g(x + h), g(x - h), g(x)
    ...         gap = relative_gap(abs(plus + minus - 2 * base), abs(plus - base))
    ...         return gap, lambda accepted: (plus - minus) / (2 * h)
    ...     return product_at
    >>> product, gap, retries = checked_difference(differences(lambda x: 3 * x ** 2, 1.0), 1e-3)
    >>> round(product, 6), retries
    (6.0, 0)
    >>> product, gap, retries = checked_difference(differences(lambda x: float(x > 0) - float(x < 0), 1e-4), 1e-3)
    >>> product, retries
    (0.0, 1)
    """
    h, gaps = first_step, []
    for _ in range(STEPS):
        gap, finish = product_at(h)
        gaps.append(gap)
        accepted = gap <= MAX_GAP or math.isnan(gap)
        product = finish(accepted)
        if accepted:
            return product, gap, len(gaps) - 1
        h /= STEP_SHRINK
    raise UnreliableDifferenceError(
        f"finite-difference Hessian-vector products of {subject} are not reliable: the forward and "
        f"backward differences differ by {', '.join(f'{g:.2g}' for g in gaps)} of the product at the "
        f"steps {first_step:.2g} .. {h * STEP_SHRINK:.2g} (more than {MAX_GAP}), as where the steps "
        f"cross kinks of the loss (ReLU); measure a model in float64, or one with a smooth activation "
        f"(GELU)")


def difference_operator(op):
    """The operator whose products are these differences behind ``op`` (itself, or the one a
    wrapper holds as ``.op``: a pre-conditioned or an all-reduced operator, or both), or None
    where the products are exact.

    >>> class Differences:
    ...     mode = "finite_difference"
    >>> class Wrapper:
    ...     def __init__(self, op):
    ...         self.op = op
    >>> inner = Differences()
    >>> difference_operator(Wrapper(Wrapper(inner))) is inner, difference_operator(Wrapper(object()))
    (True, None)
    """
    return next((o for o in operator_chain(op) if getattr(o, "mode", None) == "finite_difference"), None)


#: How many first steps a row looked up by a ``max_norm`` embedding must stay below it: the certificate's
#: products take up to twice the step (:func:`scaled_step`), and a margin on that.
RENORM_STEPS = 4.0


def refuse_renormed_differences(op, what: str = "hvp='finite_difference'",
                                way_out: str = "use hvp='double_backprop' (the default) or 'forward_over_reverse'") -> None:
    """A ValueError where the finite-difference operator ``op`` (``op.mode``) reads embedding rows
    that a ``max_norm`` renormalises, or would once moved by a few difference steps
    (``op._renorm_room``, :class:`~catapult.curvature.stateless.RenormedCopies`): the gradient at
    shifted weights is taken at the rows renormalised again, so the differences take in the
    renormalisation's derivative, which the exact products (and torch's gradient) leave out
    (``nn.Embedding(max_norm=0.5)`` over rows of norm ~2: a sharpness 0.3847 for 0.3952, converged;
    FSDP2's products alike). ``what``: the setting refused; ``way_out``: what measures it.

    >>> class Op:
    ...     mode, _eps, _renorm_room = "finite_difference", 2.0 ** -52, 1.0
    >>> refuse_renormed_differences(Op())
    >>> Op._renorm_room = -1.5
    >>> refuse_renormed_differences(Op())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hvp='finite_difference': an embedding lookup with max_norm renormalises rows ...
    """
    if op.mode == "finite_difference" and op._renorm_room < RENORM_STEPS * central_step(op._eps):
        raise ValueError(f"{what}: an embedding lookup with max_norm renormalises rows the batch reads (or would, "
                         f"moved by a difference step), so differences of gradients take in the renormalisation's "
                         f"derivative, which torch's gradient and the exact products leave out (a sharpness 2.6% "
                         f"low, marked converged); {way_out}")


@contextlib.contextmanager
def scaled_step(op, factor: float):
    """Products of the difference operator ``op`` taken at ``factor`` times its first step
    inside the block (its ``step_factor``; the kink check's retries shrink from there).

    >>> class Differences:
    ...     step_factor = 1.0
    >>> op = Differences()
    >>> with scaled_step(op, 2.0):
    ...     op.step_factor
    2.0
    >>> op.step_factor
    1.0
    """
    kept = op.step_factor
    op.step_factor = kept * factor
    try:
        yield op
    finally:
        op.step_factor = kept


def spectral_norm_training(model) -> str | None:
    """The name of the first module of ``model`` under spectral norm in train mode (a
    ``torch.nn.utils.parametrizations.spectral_norm`` parametrization, or the legacy
    ``torch.nn.utils.spectral_norm`` hook), or None. In train mode every forward runs a power
    iteration (without grad) from the stored vectors at the weight it is given, so the gradients
    that finite differences subtract hold different vectors at ``theta + h u`` and ``theta - h u``:
    their products are the derivative of a field that is no gradient (6% asymmetric on a
    ``Linear(3, 4)`` under spectral norm, a sharpness 0.45% off the exact modes', marked converged).

    >>> import torch
    >>> from torch.nn.utils.parametrizations import spectral_norm
    >>> model = torch.nn.Sequential(torch.nn.Tanh(), spectral_norm(torch.nn.Linear(2, 2)))
    >>> spectral_norm_training(model), spectral_norm_training(model.eval())
    ('1', None)
    """
    import sys

    import torch
    from torch.nn.utils.parametrizations import _SpectralNorm
    legacy = getattr(sys.modules.get("torch.nn.utils.spectral_norm"), "SpectralNorm", ())
    for name, module in model.named_modules():
        if not module.training:
            continue
        lists = getattr(module, "parametrizations", None)
        if isinstance(lists, torch.nn.ModuleDict) and any(
                isinstance(p, _SpectralNorm) and p.training for chain in lists.values() for p in chain):
            return name
        if legacy and any(isinstance(hook, legacy) for hook in module._forward_pre_hooks.values()):
            return name
    return None


def refuse_spectral_norm_differences(model, what: str) -> None:
    """A ValueError naming the module where ``what`` (finite-difference products) would meet a
    train-mode spectral norm (:func:`spectral_norm_training`).

    >>> import torch
    >>> refuse_spectral_norm_differences(torch.nn.Linear(2, 2), "hvp='finite_difference'")
    """
    if (where := spectral_norm_training(model)) is not None:
        raise ValueError(f"{what}: module {where!r} is under spectral norm in train mode, whose power iteration "
                         f"moves with the parameters, so differences of its gradients are no Hessian products; "
                         f"call model.eval() (the stored vectors, no iteration), or use hvp='double_backprop'")
