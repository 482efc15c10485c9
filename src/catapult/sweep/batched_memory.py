"""The torch.func engine's memory model: how many members of a group one chunk may hold.

A member of a :class:`~catapult.sweep.batched.FuncStack` costs, in bytes (``s``: the itemsize
of the training dtype, ``s_h``: that of the sharpness dtype, ``P``: parameters, ``S``: optimizer
state tensors per parameter, ``A``: activation elements autograd saves for one member's loss on
one training batch, measured -- see :func:`saved_activation_elements`)::

    train  = s   * (P * (3 + 2 S) + 2 A) + buffer bytes
             (parameters, gradient, the rule's new parameters; state and its new copy;
              the saved activations and as much again for the backward's temporaries)
    sharp  = s_h * (P * (max_basis + 7) + 3 A)        (members that measure sharpness or lambda_0)
             (Krylov basis + start/warm/pre-conditioner/product vectors and 3 parameter-sized
              copies in the HVP graph; its activations: forward, gradient graph, product)
    member = train + sharp

With ``eval.sharpness_chunk_size = c`` the HVP's activations are those of a chunk of ``c``
samples (``A`` scaled by ``c / batch``). The test set is evaluated in bounded groups
(:meth:`~catapult.sweep.batched_model.StackedModel.members_per_pass`), so it is left out.

The float64 check of a float32 pre-conditioned mark (:func:`~catapult.sweep.batched_loop.certified_members`)
is not counted: it runs after the solve's graph and basis are gone, on at most half of the chunk's members
at a time, and measured (``bench/probe_check_memory.py``, RESULTS) it stayed at 0.45-0.75x of the solve's
peak for chunks of 2 to 4 members. Only a chunk of one member checks all of it (1.2-2.2x its solve's
peak), and no estimate can make a chunk smaller than one member.

The budget (:func:`memory_budget`): on CUDA the device's free memory times ``fraction_cuda``
(0.9: headroom for the allocator's fragmentation); on the CPU a fraction (``fraction``, the
executor's ``func_memory_fraction``) of the machine's physical memory. A chunk holds
``budget // member`` members (at least 1).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch

from catapult import config as cfg
from catapult.arguments import check_real

__all__ = ["saved_activation_elements", "func_member_bytes", "memory_budget", "chunk_members",
           "STATE_TENSORS", "DEFAULT_FRACTION", "CUDA_FRACTION"]

#: optimizer state tensors per parameter, per rule (amsgrad adds one to adam/adamw)
STATE_TENSORS = {"sgd": 1, "adam": 2, "adamw": 2, "radam": 2, "gi-adam": 2}
#: share of the machine's RAM the torch.func engine's chunk may plan for (CPU)
DEFAULT_FRACTION = 0.25
#: share of a CUDA device's free memory a chunk may plan for
CUDA_FRACTION = 0.9


def saved_activation_elements(model: torch.nn.Module, loss_fn: Callable, x: torch.Tensor,
                              y: torch.Tensor) -> int:
    """Elements of the tensors autograd saves for the backward of ``loss_fn(model(x), y)``,
    each storage counted once, leaving out the parameters, buffers and the batch itself (a
    batched engine shares the batch between members and counts parameters apart). Works for
    any architecture (linear, conv, attention): it asks autograd what it keeps."""
    shared = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x, y]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in shared and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes() // max(1, t.element_size()))
        return t

    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y)
        if params:
            torch.autograd.grad(loss, params, allow_unused=True)
    return sum(seen.values())


def func_member_bytes(*, n_params: int, buffer_bytes: int, activations: int, itemsize: int,
                      rule: str, amsgrad: bool = False, sharpness: bool = False, sharp_itemsize: int | None = None,
                      max_basis: int = 20, hvp_fraction: float = 1.0) -> int:
    """Bytes one member adds to a chunk (the module docstring's formula). ``activations``:
    :func:`saved_activation_elements` on one training batch; ``hvp_fraction``: the share of
    the batch in one HVP micro-batch (``chunk_size / batch``, at most 1)."""
    # nan counted as 1 (min(1.0, nan)), a negative share took the HVP's activations off the plan
    hvp_fraction = check_real("func_member_bytes", "hvp_fraction", hvp_fraction, low=0.0, low_open=True)
    state = STATE_TENSORS[rule] + (1 if amsgrad else 0)
    train = itemsize * (n_params * (3 + 2 * state) + 2 * activations) + buffer_bytes
    if not sharpness:
        return int(train)
    s_h = itemsize if sharp_itemsize is None else sharp_itemsize
    return int(train + s_h * (n_params * (max_basis + 7) + 3 * activations * min(1.0, hvp_fraction)))


def memory_budget(device: torch.device | str, fraction: float = DEFAULT_FRACTION, *,
                  total_ram: int | None = None, cuda_free: int | None = None) -> int:
    """Bytes a chunk may plan for on ``device`` (module docstring); ``total_ram`` /
    ``cuda_free`` replace what is read from the machine (for tests)."""
    # fraction=True planned for all of the RAM; "0.5" failed in Python's words
    fraction = check_real("memory_budget", "fraction", fraction, low=0.0, high=1.0, low_open=True)
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] if cuda_free is None else cuda_free
        return int(free * CUDA_FRACTION)
    if total_ram is None:
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total_ram * fraction)


def chunk_members(config: Mapping[str, Any], data: Any, budget: int) -> tuple[int, int]:
    """``(members, bytes per member)``: how many members of ``config``'s group (a validated
    run config) fit ``budget`` bytes, by building one member's model as
    :func:`catapult.engine.build_model` does and measuring its activations on one batch."""
    from catapult import engine
    from catapult.losses import get_loss

    device = engine.resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    model = engine.build_model(config, data.in_features, data.num_classes, device, dtype)
    engine.check_labels(config, model, data)   # before the loss below indexes with them
    model.train()
    n_batch = config["train"]["batch_size"] or data.x_train.shape[0]
    x = data.x_train[:n_batch].to(device)
    x = x.to(dtype) if x.is_floating_point() else x
    y = data.y_train[:n_batch].to(device)
    y = y.to(dtype) if y.is_floating_point() else y
    acts = saved_activation_elements(model, get_loss(config["loss"]), x, y)
    ev, opt = config["eval"], config["optimizer"]
    sdtype = getattr(torch, ev["sharpness_dtype"]) if ev["sharpness_dtype"] else dtype
    chunk = ev["sharpness_chunk_size"]
    per = func_member_bytes(
        n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        activations=acts, itemsize=torch.empty((), dtype=dtype).element_size(), rule=opt["name"],
        amsgrad=bool(opt.get("amsgrad", False)),
        sharpness=ev["sharpness_every"] > 0 or cfg.lr_needs_lambda0(opt["lr"]),
        sharp_itemsize=torch.empty((), dtype=sdtype).element_size(), max_basis=ev["sharpness_max_basis"],
        hvp_fraction=1.0 if chunk is None else chunk / max(1, x.shape[0]))
    return max(1, budget // max(1, per)), per

