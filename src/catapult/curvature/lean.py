"""Problem-sized ``memory="lean"``: micro-batches and Krylov basis chosen so that a sharpness
solve's predicted peak memory stays within 3x a training step's (issue 16).

Memory model (bytes above the set-up state, which already holds the model and the batch):

* training step: ``T = P + A`` -- the gradients (``P`` = one parameter-sized vector) and the
  activations autograd saves for one forward/backward on the whole batch (``A``);
* lean solve: ``(B + C) P + A / m`` -- ``B`` Krylov vectors, ``C = 7`` further parameter-sized
  vectors (the HVP's output, the chunk's gradient and its graph, the start and Ritz vectors, the
  restart's work space; measured on the Fig. 1 FCN, ``bench/RESULTS.md``) and one micro-batch's
  activations (``m`` micro-batches).

``A`` is estimated by :func:`activation_bytes`: one forward on a few samples, counting the bytes
of the tensors autograd saves for backward (not the parameters or the batch, which the set-up
state holds), scaled to the batch.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch.func import functional_call

from catapult.curvature.hessian import fixed_rng

__all__ = ["lean_sizes", "activation_bytes", "LEAN_RATIO", "LEAN_MIN_BASIS", "LEAN_MAX_BASIS",
           "LEAN_OVERHEAD_VECTORS"]

#: The promise: predicted peak <= LEAN_RATIO x a training step's.
LEAN_RATIO = 3
#: Basis bounds: 3 is the least a thick restart keeps useful; 10 was lean's fixed size (more
#: vectors save few products once the solve converges in a handful of them).
LEAN_MIN_BASIS, LEAN_MAX_BASIS = 3, 10
#: Parameter-sized vectors besides the basis (fit to the Fig. 1 FCN's measured peaks).
LEAN_OVERHEAD_VECTORS = 7


def lean_sizes(param_bytes: int, act_bytes: int, n: int) -> tuple[int, int, bool]:
    """``(chunks, max_basis, fits)`` of ``memory="lean"`` for ``P = param_bytes`` (one
    parameter-sized vector), ``A = act_bytes`` (a training step's activations on the batch) and
    ``n`` samples.

    * ``chunks m``: the smallest power of two with ``A / m <= P`` (one micro-batch's activations
      no larger than one parameter vector), at most ``n``;
    * ``max_basis B = min(10, floor((3 (P + A) - 7 P - ceil(A / m)) / P))``, the largest basis
      whose predicted peak ``(B + 7) P + A / m`` is ``<= 3 x`` the step's ``P + A``;
    * if that ``B < 3``, 3x cannot be met (small batches: the step is little more than one
      gradient while the solver needs >= 10 parameter-sized vectors): ``fits = False`` and
      ``B = 3``, the minimum (the caller warns).

    >>> lean_sizes(1_000_000, 5_600_000, 5000)   # m = 8 (0.7 P); floor(19.8 - 7 - 0.7) = 12 -> 10
    (8, 10, True)
    >>> lean_sizes(1_000_000, 2_800_000, 2500)   # m = 4 (0.7 P); floor(11.4 - 7 - 0.7) = 3
    (4, 3, True)
    >>> lean_sizes(1_000_000, 1_100_000, 1000)   # floor(6.3 - 7 - 0.55) < 3
    (2, 3, False)
    """
    P, A, n = int(param_bytes), int(act_bytes), max(1, int(n))
    m = 1
    while A > m * P and m < n:
        m *= 2
    m = min(m, n)
    basis = (LEAN_RATIO * (P + A) - LEAN_OVERHEAD_VECTORS * P - math.ceil(A / m)) // P
    if basis < LEAN_MIN_BASIS:
        return m, LEAN_MIN_BASIS, False
    return m, int(min(LEAN_MAX_BASIS, basis)), True


def activation_bytes(model: torch.nn.Module, loss_fn, batch, *, probe: int = 8,
                     seed: int = 0) -> int:
    """Bytes autograd saves for backward in one forward + loss on the whole batch, estimated from
    the first ``probe`` samples and scaled by ``n / probe``. Tensors sharing storage with the
    parameters, buffers or the batch are not counted (the set-up state holds them already); a
    tensor saved twice counts once. The model's parameters, buffers (cloned, as in
    :class:`~catapult.curvature.HessianOperator`), mode and the global RNG are left untouched.

    >>> model = torch.nn.Linear(2, 1, bias=False)   # MSE saves the output: 4 bytes a sample
    >>> activation_bytes(model, torch.nn.MSELoss(), (torch.zeros(10, 2), torch.zeros(10, 1)))
    40
    """
    inputs, targets = batch
    n = inputs.shape[0]
    k = max(1, min(int(probe), n))
    x, y = inputs[:k], targets[:k] if torch.is_tensor(targets) and targets.dim() else targets
    params = {name: p.detach().requires_grad_(p.requires_grad) for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    held = {t.untyped_storage().data_ptr() for t in [*params.values(), *buffers.values()]}
    held |= {t.untyped_storage().data_ptr() for t in (inputs, targets) if torch.is_tensor(t)}
    seen: dict = {}

    def pack(t):
        if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in held:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            seen[key] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), fixed_rng(seed, x.device), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(functional_call(model, {**params, **buffers}, (x,)), y)
    return int(round(sum(seen.values()) * n / k))


def warn_unfit(n: int, param_bytes: int, act_bytes: int) -> None:
    """The warning of a lean solve that cannot stay within 3x a training step."""
    warnings.warn(
        f"memory='lean': {LEAN_RATIO}x a training step's peak memory cannot be met for this batch "
        f"({n} samples, activations {act_bytes / 2**20:.1f} MiB vs parameters "
        f"{param_bytes / 2**20:.1f} MiB: the solver needs >= {LEAN_MIN_BASIS + LEAN_OVERHEAD_VECTORS} "
        f"parameter-sized vectors); using the minimum basis of {LEAN_MIN_BASIS}", RuntimeWarning,
        stacklevel=4)
