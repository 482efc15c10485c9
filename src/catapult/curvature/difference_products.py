"""The finite-difference side of :class:`~catapult.curvature.hessian.HessianOperator`: gradients at
shifted parameters, summed over the micro-batches, and the products built from them (``hvp="finite_difference"``'s
checked central differences, the one-sided :meth:`~DifferenceProducts.forward_difference` of start vectors,
and the rounding scale a certificate adds: :mod:`~catapult.curvature.certify`).

Split from :mod:`catapult.curvature.hessian`, whose operator takes these methods from
:class:`DifferenceProducts`. The step rule and the kink test are :mod:`~catapult.curvature.difference`'s.
"""
from __future__ import annotations

import math

import torch

from catapult.curvature.difference import central_step, checked_difference, relative_gap, rounding_level
from catapult.curvature.grads_into import attach_grads, flush_grads, refuse_constant, scalar_loss
from catapult.curvature.krylov import scaled_norm
from catapult.curvature.microbatch import weighted_backward
from catapult.curvature.torch_errors import named_missing_derivatives

__all__ = ["DifferenceProducts"]


class DifferenceProducts:
    """Gradient differences of an operator that holds its trainable parameters (``_params``, in
    ``names`` order, split by ``split``), its micro-batches (``_chunks``: ``(inputs, targets,
    weight)``), its loss at given parameters (``_loss``), ``_eps`` (the rounding unit),
    ``step_factor``, ``agree_gap`` and, in ``"compiled"`` mode, ``_compiled_call`` and ``_theta``:
    :class:`~catapult.curvature.hessian.HessianOperator`, which inherits these methods. State it
    keeps: ``_base`` (``g(theta)``, computed once), ``difference_gap`` and ``shrunk_steps``.

    >>> from catapult.curvature.hessian import HessianOperator
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    >>> H = HessianOperator(model, torch.nn.MSELoss(), batch, hvp="finite_difference", dtype=torch.float64)
    >>> isinstance(H, DifferenceProducts), H(torch.tensor([1.0, 1.0], dtype=torch.float64)).round(decimals=6)
    (True, tensor([4., 1.], dtype=torch.float64))
    """
    def _difference_base(self) -> torch.Tensor:
        """Flat ``g(theta)`` summed as the shifted gradients are (computed once)."""
        if self._base is None and self.mode == "compiled":
            self._base = self._compiled_call("gradient", self._theta)
        elif self._base is None:
            self._base = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
            self._gradient_into(self._leaf_buffers(), self.split(self._base))
        return self._base

    def _leaf_buffers(self) -> list[torch.Tensor]:
        return [torch.empty_like(p) for p in self._params.values()]

    def _gradient_into(self, leaves, views, parts=(), scale: float = 0.0) -> None:
        """``views += g(theta + scale v)`` (``v`` given as ``parts``, split like the parameters),
        through ``.grad`` accumulation, with ``leaves`` (one buffer per parameter) holding the
        shifted parameters."""
        with torch.no_grad():
            for leaf, p in zip(leaves, self._params.values()):
                leaf.copy_(p)
            for leaf, c in zip(leaves, parts):
                leaf.add_(c.to(leaf.dtype), alpha=scale)
        for leaf in leaves:
            leaf.requires_grad_(True)
        for x, y, w in self._chunks:
            attach_grads(leaves, views)
            try:
                with torch.enable_grad():   # the backward while the model holds the shifted leaves
                    self._loss(dict(zip(self.names, leaves)), x, y,
                               then=lambda loss, w=w: self._backward(scalar_loss(loss), w, leaves))
                flush_grads(leaves, views)
            finally:
                for leaf in leaves:
                    leaf.grad = None
        for leaf in leaves:
            leaf.requires_grad_(False)

    def _backward(self, loss: torch.Tensor, weight: float, leaves) -> None:
        refuse_constant(loss)
        weighted_backward(loss, weight, leaves, self._eps)

    def _finite_difference_into(self, parts, out: torch.Tensor, norm: float) -> None:
        """``out += (g(theta + h u) - g(theta - h u)) / 2h * ||v||``, ``u = v / ||v||``, checked
        for kinks (:func:`~catapult.curvature.difference.checked_difference`). One work vector
        ``f`` and one buffer of shifted parameters: ``f = g+ - g0``, ``out += 2 s f``, then ``f``
        becomes the second difference ``e = g+ + g- - 2 g0`` and ``out -= s e``, leaving
        ``out + s (g+ - g-)`` (``s = ||v|| / 2h``)."""
        if norm == 0:
            return
        base, work, leaves = self._difference_base(), torch.empty_like(out), self._leaf_buffers()
        views = self.split(work)
        # scale-safe norms (a loss times 2**531 overflowed them: gap nan, accepted; times 2**-664 they were 0 and 0)
        noise = rounding_level(self._eps, scaled_norm(base))

        def forward(h: float) -> None:  # work = g(theta + h u) - g0
            work.copy_(base).neg_()
            self._gradient_into(leaves, views, parts, h / norm)

        def product_at(h: float):
            s = norm / (2.0 * h)
            forward(h)
            first = scaled_norm(work)
            out.add_(work, alpha=2.0 * s)
            self._gradient_into(leaves, views, parts, -h / norm)   # work = g+ + g- - g0
            work.sub_(base)
            gap = self.agree_gap(relative_gap(scaled_norm(work), first, noise))

            def finish(accepted: bool) -> None:
                if accepted:
                    out.add_(work, alpha=-s)
                else:  # take back the 2 s f added above
                    forward(h)
                    out.add_(work, alpha=-2.0 * s)
            return gap, finish

        _, gap, retries = checked_difference(product_at, central_step(self._eps) * self.step_factor)
        self.difference_gap = max(self.difference_gap, gap)
        self.shrunk_steps += retries

    def difference_rounding(self, scale: torch.Tensor | None = None) -> float:
        """``eps ||scale * g(theta)|| / h`` at the first step ``h``: the scale of the rounding (an ulp
        or so of each gradient entry) in a difference product of a unit vector, seen through a
        diagonal ``scale`` (:data:`~catapult.curvature.certify.ROUNDING_FLOOR`); the ranks' largest
        under :class:`~catapult.curvature.distributed.DistributedOperator` (a collective)."""
        base = self._difference_base()
        norm = scaled_norm(base if scale is None else base * scale)
        return self.agree_gap(self._eps * norm / central_step(self._eps))

    @named_missing_derivatives
    def forward_difference(self, v: torch.Tensor) -> torch.Tensor:
        """``H v ~ (g(theta + h u) - g(theta)) / h * ||v||`` with ``u = v / ||v||`` and
        ``h = sqrt(eps)`` of the dtype (3.5e-4 in float32, 1.5e-8 in float64): one gradient per
        product (the gradient at ``theta`` is :meth:`gradient`, computed once), about half the
        cost of an exact product, with an ``O(h)`` error. An approximation for start vectors
        (:mod:`catapult.curvature.coarse`), never what a solve certifies; not counted in
        ``matvecs``. Measured relative error of ``H v`` on the small GPT of
        ``bench/bench_peers.py`` in float32: 2e-3 on its top eigenvector, 5e-3 on a random one.

        Example (a quadratic: the difference is exact up to rounding):
            >>> from catapult.curvature.hessian import HessianOperator
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
            >>> H = HessianOperator(model, torch.nn.MSELoss(), batch, dtype=torch.float64)
            >>> H.forward_difference(torch.tensor([1.0, 1.0], dtype=torch.float64)).round(decimals=5)
            tensor([4., 1.], dtype=torch.float64)
        """
        v = v.to(device=self.device, dtype=self.dtype)
        norm = scaled_norm(v)   # (plain: a v of norm < ~1e-154 gave H v = 0, one past ~1e154 nan)
        if norm == 0 or not self._finite_loss:
            return torch.zeros_like(v) if self._finite_loss else torch.full_like(v, math.nan)
        h = self._eps ** 0.5
        if self.mode == "compiled":
            shifted = self._compiled_call("gradient", torch.add(self._theta, v, alpha=h / norm))
        else:
            shifted = torch.zeros_like(v)
            self._gradient_into(self._leaf_buffers(), self.split(shifted), self.split(v), h / norm)
        return shifted.sub_(self.gradient()).mul_(norm / h)

