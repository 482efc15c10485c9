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

__all__ = ["GIAdam", "GIAdamW", "initial_second_moment", "V0_CHOICES"]

#: String values accepted for ``v0`` (a number ``a >= 0`` is accepted too).
V0_CHOICES = ("grad", "random")


def _scalar_dtype() -> torch.dtype:
    # torch.optim.Adam keeps "step" as a float32 CPU tensor (float64 under a float64 default).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_v0(v0: Any) -> str | float:
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


def initial_second_moment(grad: Tensor, v0: str | float, seed: int = 0) -> Tensor:
    """The second moment ``v_0`` GI-Adam starts from, for a first gradient ``grad``.

    * ``v0="grad"``: ``v_0 = g^2`` (so ``v_1 = b2 * v_0 + (1 - b2) * g^2 = g^2``);
    * ``v0=a`` (a number): ``v_0 = a * g^2`` (the paper studies ``a >= 1``; ``a = 0`` is Adam);
    * ``v0="random"`` (the paper's control): ``v_0 = r * ||g^2|| / ||r||`` with
      ``r ~ U[0, 1)`` elementwise, drawn on the CPU from ``torch.Generator().manual_seed(seed)``
      (independent of the global RNG and of the device), so ``v_0`` is positive and has the
      Frobenius norm of ``g^2``.

    Returns a new tensor shaped like ``grad``; nothing else is touched.
    """
    g2 = torch.mul(grad, grad)
    if v0 == "grad":
        return g2
    if v0 == "random":
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        r = torch.rand(grad.shape, generator=generator, dtype=torch.float64)
        r = r.to(device=grad.device, dtype=grad.dtype)
        r_norm = r.norm()
        if r_norm == 0:
            return g2
        return r.mul_(g2.norm() / r_norm)
    return g2.mul_(float(v0))


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
        foreach: use ``torch._foreach_*`` kernels (default: when all parameters are on CUDA).
            Both paths perform the same arithmetic and give identical results.
        maximize: ascend instead of descend.
        seed: base seed for ``v0="random"``; parameter number ``i`` (its position across all
            param groups) draws from ``torch.Generator().manual_seed(seed + i)``.

    State per parameter uses torch Adam's keys -- ``"step"`` (a scalar float tensor, like torch),
    ``"exp_avg"``, ``"exp_avg_sq"`` -- so code that reads Adam state works unchanged.
    Weight decay is already decoupled, so :data:`GIAdamW` is an alias of this class.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, v_bias_correction: bool = True,
                 v0: str | float = "grad", *, foreach: bool | None = None, maximize: bool = False,
                 seed: int = 0):
        if isinstance(lr, Tensor):
            lr = lr.item()
        if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"Invalid learning rate lr={lr!r}: need a finite number >= 0")
        if not (isinstance(eps, numbers.Real) and eps >= 0):
            raise ValueError(f"Invalid eps={eps!r}: need a number >= 0")
        if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas={betas!r}: need two numbers in [0, 1)")
        if not (isinstance(weight_decay, numbers.Real) and weight_decay >= 0):
            raise ValueError(f"Invalid weight_decay={weight_decay!r}: need a number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        defaults = dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                        weight_decay=float(weight_decay), v_bias_correction=bool(v_bias_correction),
                        v0=_check_v0(v0), foreach=foreach, maximize=bool(maximize), seed=int(seed))
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key in ("v_bias_correction", "foreach", "maximize", "seed"):
                group.setdefault(key, self.defaults.get(key))
            group.setdefault("v0", "grad")
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_scalar_dtype())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim's ``add_param_group``, plus a check of a group's own ``v0``."""
        if "v0" in param_group:
            param_group["v0"] = _check_v0(param_group["v0"])
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
        seed = group["seed"] + self._param_index(param) if group["v0"] == "random" else 0
        return initial_second_moment(grad, group["v0"], seed)

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One GI-Adam step; ``closure`` (re-evaluates the loss, with grad enabled) is optional."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GIAdam does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("GIAdam does not support complex parameters")
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = self.initial_exp_avg_sq(p, grad, group)
                params.append(p)
                grads.append(grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            update = _multi_tensor_giadam if foreach else _single_tensor_giadam
            beta1, beta2 = group["betas"]
            update(params, grads, exp_avgs, exp_avg_sqs, steps, lr=float(group["lr"]),
                   beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                   v_bias_correction=group["v_bias_correction"])
        return loss


#: GI-Adam's weight decay is already decoupled (AdamW-style), so GIAdamW is the same optimizer.
GIAdamW = GIAdam


# --------------------------------------------------------------------------------------------
# The arithmetic, per tensor and with foreach kernels (same operations in the same order, the
# order torch.optim.Adam uses, so v0=0 reproduces torch AdamW exactly).
# --------------------------------------------------------------------------------------------
def _single_tensor_giadam(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                          weight_decay, v_bias_correction):
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step_t += 1
        step = step_t.item()
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1 ** step)
        denom = exp_avg_sq.sqrt()
        if v_bias_correction:
            denom.div_((1 - beta2 ** step) ** 0.5)
        denom.add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_giadam(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                         weight_decay, v_bias_correction):
    # foreach kernels need tensors of one device and dtype per call
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        buckets[(p.device, p.dtype)].append(i)
    torch._foreach_add_(steps, 1)
    for idx in buckets.values():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        vs = [exp_avg_sqs[i] for i in idx]
        step_values = [steps[i].item() for i in idx]
        if weight_decay != 0:
            torch._foreach_mul_(ps, 1 - lr * weight_decay)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        neg_step_sizes = [-(lr / (1 - beta1 ** s)) for s in step_values]
        denoms = torch._foreach_sqrt(vs)
        if v_bias_correction:
            torch._foreach_div_(denoms, [(1 - beta2 ** s) ** 0.5 for s in step_values])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(ps, ms, denoms, neg_step_sizes)
