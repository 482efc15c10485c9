"""Curvature of a model sharded over the ranks by FSDP2 (``torch.distributed.fsdp.fully_shard``),
for ``distributed=True``: each rank holds ``1/W`` of every parameter as a ``DTensor`` shard.

Double backward does not run through FSDP's all-gather and reduce-scatter hooks (the gathered
weights are freed after each block, and the hooks expect one plain ``backward``), so the
products are central differences of the model's own gradient, the ``"finite_difference"`` mode
of :class:`~catapult.curvature.HessianOperator` run through the sharded model::

    H v ~ (g(theta + h u) - g(theta - h u)) / (2 h) * ||v||,   u = v / ||v||,  h = eps^(1/3)

``g`` is the gradient of the union's loss ``L = sum_r w_r L_r`` (``w_r`` = this rank's share of
the samples, :func:`~catapult.curvature.distributed.shard_weight`): each rank back-propagates
``W w_r L_r``, FSDP reduce-scatters the gradients as means over the ``W`` ranks, so every shard
holds its rows of ``sum_r w_r g_r``. The vectors are split like the parameters
(``vectors="local"``, what :func:`~catapult.sharpness`, :func:`~catapult.preconditioned_sharpness`,
:func:`~catapult.top_eigenpairs`, :func:`~catapult.hessian_trace` and
:func:`~catapult.spectral_density` use): each rank holds its rows of every Krylov vector (and
of every random probe of the trace and the density), the gradients are never gathered, and the
solvers sum their inner products over the ranks (``reduce``, one all-reduce of a few numbers
per step), so a rank's memory for the solve is its share of ``max_basis`` vectors, not
``max_basis`` whole ones; ``est.vector`` is this rank's part. With ``vectors="full"`` (what
:func:`~catapult.curvature.spectral_operator.curvature_operator` gives, an operator on whole vectors) the
gradients' shards are all-gathered and every rank runs the same iteration on whole vectors, as
with :class:`~catapult.curvature.distributed.DistributedOperator`.

Where the loss has kinks (ReLU), a step that crosses one makes the difference describe no
Hessian (a ReLU GPT in float64: 84.2 instead of the exact 21.0), so every product is checked as
:mod:`~catapult.curvature.difference` says: its forward and backward differences must agree
(``g(theta)`` is computed once), or it is taken again with a 16 times smaller step, twice at
most, and the call raises a ValueError if no step passes. (The ReLU GPT in float64 then gives
21.03184503 against the exact 21.03184516; in float32 the steps that avoid the kinks are swamped
by rounding, and it raises.) ``difference_gap`` is the largest gap accepted, ``shrunk_steps`` how
many retries it took. In float32 the differences' own error can exceed ``tol``: the solve
certifies ``tol`` for the difference operator, which was 0.5% off the Hessian's sharpness of a
small GELU GPT (2e-5 for Adam's pre-conditioned one; 1e-6 in float64; ``bench/RESULTS.md``,
section 5b).

Each gradient moves the local shards to ``theta +- h u`` in place, then copies the saved shards
back (bit for bit), and keeps ``.grad`` aside and puts it back, so the parameters, their
gradients and the model's mode are as they were. The forward runs under the fixed RNG of
:func:`~catapult.curvature.rng.fixed_rng` (one dropout mask for every product).

What is refused (ValueError naming it): ``distributed=False`` on a sharded model, ``hvp`` other
than ``"auto"`` / ``"finite_difference"``, a ``dtype`` other than the parameters', micro-batches
(``chunk_size``), the Gauss-Newton curvature, placements other than FSDP's ``Shard(0)`` or
``Replicate()`` on a 1-D mesh, and a loss that reaches a parameter on some ranks' shards but not
on others' (a branch only some ranks take: FSDP's reduce-scatters would differ, or, where it skips a
module with its own ``fully_shard``, its all-gather; :mod:`~catapult.curvature.sharded_reach`), on every
rank before those collectives.

What is not agreed: a forward that raises on one rank only (a token id beyond the vocabulary in
that rank's shard). An unsharded model's first forward is guarded, and every rank stops with
that rank's error; a sharded model's forward all-gathers each block's weights as it goes, so the
others may still be inside those all-gathers: the failing rank raises its error at once
(:func:`~catapult.curvature.distributed.agreed` with ``collective``), and the others' all-gather
ends when its process does (``catapult train-ddp`` then names that rank and its error on every
rank). A process that catches the error and goes on leaves the others waiting in the all-gather
until the process group's timeout, as in FSDP training itself. Guarding it would mean gathering
the whole model first, the memory that sharding exists to avoid: check such inputs before the call.

Example: ``L(w) = mean((x w - y)^2)`` over ``x = (2, 0), (0, 1)`` has the Hessian ``diag(4, 1)``;
here one process (a gloo group of world size 1) holds the sharded model; launched with
``torchrun`` on ``W`` processes, the same lines give every rank the union's sharpness.

    >>> import catapult
    >>> from torch.distributed.fsdp import fully_shard
    >>> from catapult.curvature.distributed import single_process_group
    >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
    ...          torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    >>> with single_process_group():
    ...     model = fully_shard(torch.nn.Linear(2, 1, bias=False).double())
    ...     est = catapult.sharpness(model, torch.nn.MSELoss(), batch, distributed=True)
    >>> round(est.value, 6), est.converged
    (4.0, True)
"""
from __future__ import annotations

import contextlib
import math
import sys

import torch

from catapult.arguments import check_batch, check_seed

from catapult.curvature.distributed import agreed, all_reduce_sum
from catapult.curvature.grads_into import refuse_complex
from catapult.curvature.difference import (RENORM_STEPS, central_step, checked_difference,
                                           refuse_renormed_differences, refuse_spectral_norm_differences,
                                           relative_gap, rounding_level)
from catapult.curvature.rng import fixed_rng
from catapult.curvature.krylov import scaled_norm
from catapult.curvature.start import init_direction, init_size_error, mixed_start, real_init, warm_start_weight
from catapult.curvature.stateless import AttributesKept, RenormedCopies
from catapult.curvature.torch_errors import functions_without_backward, no_backward_error
from catapult.curvature.sharded_reach import parameters_in_use, refuse_uneven_reach, same_sharded_modules
from catapult.curvature.twice import forms_for, graph_functions, needs_forms


__all__ = ["is_sharded", "reshard", "reset_after_error", "reset_on_error", "full_tensor", "check_sharded_options",
           "ShardedHessianOperator"]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without torch.distributed
        return None
    return DTensor


def _fsdp_modules(model: torch.nn.Module) -> list:
    # FSDPModule is defined in torch.distributed.fsdp: with that package never imported no module is
    # one, and importing it to ask cost every sharpness call on torch 2.2.2 its torch._dynamo import
    # (+1.0 CPU s a process: 2.2's fsdp imports DTensor's ops, they the functional collectives, they dynamo)
    if "torch.distributed.fsdp" not in sys.modules:
        return []
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without torch.distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) was applied to ``model`` or one of its modules. (Its
    parameters are ``DTensor`` shards except while FSDP holds them gathered, e.g. the root's after
    a forward without a backward.)

    >>> is_sharded(torch.nn.Linear(2, 1))
    False
    """
    return bool(_fsdp_modules(model))


def reshard(model: torch.nn.Module) -> None:
    """Free the weights FSDP still holds gathered in ``model`` (e.g. the root's, after a forward
    without a backward), so its parameters are the ``DTensor`` shards again; nothing for a model
    without ``fully_shard``.

    >>> reshard(torch.nn.Linear(2, 1))
    """
    for module in _fsdp_modules(model):
        module.reshard()


def reset_after_error(model: torch.nn.Module) -> None:
    """Put FSDP2's state of ``model`` back after one of its forwards (or a ``loss_fn`` after it,
    or a backward) raised midway: the root's ``reset_iter_state()`` (where torch's ``FSDPModule``
    has it, as 2.13 does; it also reshards a root whose forward raised inside a block, which
    :func:`reshard` leaves gathered, so an older torch leaves that one gathered until the next
    backward), then :func:`reshard`. The curvature calls and :func:`catapult.critical_lr` call it when they
    raise: the root held the gathered weights of their last forward (``theta + h u`` of a
    difference, a trial's ``theta - lr u``), and the caller's next forward read them instead of
    the shards. No collective (one rank's error does not wait on the others); an error of its
    own is dropped, so that the caller's error is the one raised. Nothing for a model without
    ``fully_shard``.

    >>> reset_after_error(torch.nn.Linear(2, 1))
    """
    with contextlib.suppress(Exception):   # the caller's error is the one to raise
        modules = _fsdp_modules(model)
        for module in modules:
            reset = getattr(module, "reset_iter_state", None)
            if callable(reset):
                try:
                    reset()
                except RuntimeError:   # not the root ("must be called on the root FSDP module")
                    pass
        for module in modules:
            module.reshard()


@contextlib.contextmanager
def reset_on_error(model: torch.nn.Module):
    """:func:`reset_after_error` of ``model`` where the block raises, then the error itself.

    >>> with reset_on_error(torch.nn.Linear(2, 1)):
    ...     pass
    """
    try:
        yield
    except BaseException:
        reset_after_error(model)
        raise


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a ``DTensor`` shard (all-gathered: a collective, every rank calls
    it), or ``t`` itself when it is a plain tensor.

    >>> full_tensor(torch.ones(2))
    tensor([1., 1.])
    """
    DTensor = _dtensor_type()
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t


def check_sharded_options(*, distributed: bool, hvp: str = "auto", dtype=None, chunk_size=None,
                          curvature: str = "hessian", param_dtype: torch.dtype | None = None) -> None:
    """Raise a ValueError naming the first option a sharded model's curvature does not take.

    >>> check_sharded_options(distributed=True)
    >>> check_sharded_options(distributed=True, hvp="double_backprop")
    Traceback (most recent call last):
    ...
    ValueError: hvp='double_backprop' needs double backward, which FSDP's hooks do not run: use hvp='finite_difference' (or 'auto') on a model sharded by fully_shard
    """
    if not distributed:
        raise ValueError("the model's parameters are DTensor shards (FSDP2 fully_shard): pass distributed=True, "
                         "on every rank of its process group")
    if hvp not in ("auto", "finite_difference"):
        raise ValueError(f"hvp={hvp!r} needs double backward, which FSDP's hooks do not run: use "
                         f"hvp='finite_difference' (or 'auto') on a model sharded by fully_shard")
    if curvature != "hessian":
        raise ValueError(f"curvature={curvature!r} is not measured on a model sharded by fully_shard "
                         f"(its products need forward-mode AD through FSDP's hooks): use curvature='hessian'")
    if chunk_size is not None:
        raise ValueError("chunk_size (micro-batches, also memory='lean''s) is not run on a model sharded by "
                         "fully_shard: FSDP already holds one block's weights at a time; give each rank a "
                         "smaller shard of the batch instead")
    if dtype is not None and param_dtype is not None and param_dtype != dtype:
        raise ValueError(f"dtype={dtype} differs from the sharded parameters' {param_dtype}: a sharded "
                         f"model is measured in its own dtype (cast it before fully_shard)")


#: How the sharded operator's refusals name the call.
SHARDED = "distributed=True on a model sharded by fully_shard"


class ShardedHessianOperator:
    """``v -> H v`` of the union's loss, for a model sharded by ``fully_shard``: central
    differences of FSDP's own gradient (see the module docstring), on flat vectors in
    ``model.parameters()`` order: whole ones, the same on every rank (``vectors="full"``), or this
    rank's rows of each parameter (``"local"``).

    ``weight`` is this rank's share of the union's samples (``shard_weight``). Attributes as
    :class:`~catapult.curvature.HessianOperator`'s: ``numel`` (the vectors' length here),
    ``dtype``, ``device``, ``names``, ``loss`` (the union's), ``gradient()`` (the union's, in
    these coordinates), ``matvecs``; and ``local``, ``dimension`` (the whole parameter count),
    ``reduce`` (the solvers' sum over ranks with local vectors, else None), ``part(t)``,
    ``localize(whole)``, ``start_vector(init, seed)``, ``rademacher(gen)`` (random signs, for the trace
    and the density), ``gradients()`` (by parameter, as ``DTensor`` shards),
    ``difference_gap`` and ``shrunk_steps`` (the module docstring). Each product costs two
    forward + backward passes of the sharded model (two more per retry).

    Example (one rank holds the whole batch of the module docstring's quadratic, ``H = diag(4, 1)``):
        >>> from torch.distributed.fsdp import fully_shard
        >>> from catapult.curvature.distributed import single_process_group
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
        ...          torch.tensor([[1.0], [0.0]], dtype=torch.float64))
        >>> linear = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.zeros_(linear.weight)     # L = (1 + 0) / 2 at w = 0
        >>> with single_process_group():
        ...     model = fully_shard(linear)
        ...     H = ShardedHessianOperator(model, torch.nn.MSELoss(), batch, weight=1.0)
        ...     product = H(torch.tensor([1.0, 1.0], dtype=torch.float64))
        >>> product.round(decimals=6).tolist(), H.matvecs, H.numel, round(H.loss, 6)
        ([4.0, 1.0], 1, 2, 0.5)
    """

    mode = "finite_difference"

    def __init__(self, model: torch.nn.Module, loss_fn, batch, weight: float, *, seed: int = 0,
                 vectors: str = "full", forms: bool = True, kept: AttributesKept | None = None):
        if vectors not in ("full", "local"):
            raise ValueError(f"vectors must be 'full' or 'local', got {vectors!r}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        check_batch("ShardedHessianOperator", batch, allow_empty=True)
        # int(seed) below made sharpness(distributed=True, seed=3.5) on an FSDP2 model the seed 3, "3" too
        seed = check_seed("ShardedHessianOperator", "seed", seed, optional=False)
        import torch.distributed as dist
        DTensor = _dtensor_type()
        self._model = model
        reshard(model)   # the parameters are the shards again (a refusal below leaves them so too)
        if forms:   # (critical_lr's gradient, forms=False, is the training's own, iteration and all)
            refuse_spectral_norm_differences(model, "distributed=True on a model sharded by fully_shard (finite "
                                                    "differences)")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("model has no parameters with requires_grad=True")
        for name, p in trainable:
            if not isinstance(p, DTensor):
                raise ValueError(f"parameter {name!r} is not sharded: fully_shard the whole model "
                                 f"(its root too), so every trainable parameter is a DTensor")
            kinds = {type(pl).__name__ for pl in p.placements}
            if p.device_mesh.ndim != 1 or not kinds <= {"Shard", "Replicate"} or any(
                    type(pl).__name__ == "Shard" and pl.dim != 0 for pl in p.placements):
                raise ValueError(f"parameter {name!r} is placed {tuple(p.placements)} on a "
                                 f"{p.device_mesh.ndim}-D mesh: only FSDP's Shard(0) or Replicate() "
                                 f"on a 1-D mesh are measured")
        self._loss_fn = loss_fn
        self._inputs, self._targets = batch
        self._params = [p for _, p in trainable]
        self.names = [n for n, _ in trainable]
        self.local = vectors == "local"
        self.dimension = sum(p.numel() for p in self._params)
        self.shapes = [p.to_local().shape if self.local else p.shape for p in self._params]
        self.sizes = [s.numel() for s in self.shapes]
        self.numel = sum(self.sizes)
        self.reduce = all_reduce_sum if self.local else None   # inner products of split vectors
        self.dtype = self._params[0].dtype
        self.device = self._params[0].to_local().device
        self.seed, self.weight = seed, float(weight)
        self._scale = self.weight * dist.get_world_size()   # FSDP's reduce-scatter takes the mean
        self._eps = max(float(torch.finfo(p.dtype).eps) for p in self._params)
        self.matvecs = 0
        self.difference_gap, self.shrunk_steps = 0.0, 0
        self.step_factor = 1.0   # the difference step's multiple (difference.scaled_step)
        with torch.no_grad():
            self._saved = [p.to_local().clone() for p in self._params]
        # an embedding's scale_grad_by_freq / sparse change its gradient, not its value: the differences
        # are taken of the loss's own gradient (twice.second_order_forms; they were 4% off, converged);
        # asked of the modules here, and of the first forward's graph (an F.embedding call) in _gradient_at
        # (forms=False: the model's own gradient, flags and all: critical_lr's step direction is the optimizer's)
        self._forms, self._walk = forms and needs_forms(model), forms
        self._for_curvature = forms   # (forms=False: critical_lr's gradient, whose refusals it words itself)
        # a state the forward carries in a plain attribute (self.h = h.detach()), found by the first forward
        # and put back after every one (into ``kept``: critical_lr's trials put back the same)
        self._kept, self._watch_state = AttributesKept() if kept is None else kept, True
        self._first, self._world = True, dist.get_world_size()
        self._grad_flat, loss = self._gradient_at(None, 0.0)
        # with the loss, a flag per parameter FSDP's backward gave a gradient (one the loss reaches on some
        # rank's shard): the ones reached on none are unused_parameters(), agreed in the same all-reduce
        total = all_reduce_sum(torch.tensor([loss * self.weight] + [float(r) for r in self._reached],
                                            dtype=torch.float64, device=self.device)).tolist()
        self.loss = float(total[0])
        self._unused = {n for n, flag in zip(self.names, total[1:]) if flag == 0.0}
        # the gradients' rounding, below which a second difference is no kink (difference.py)
        self._gradient_norm = scaled_norm(self._grad_flat, self.reduce)   # every rank's alike
        self._noise = rounding_level(self._eps, self._gradient_norm)

    def _rows(self, full: torch.Tensor, p) -> torch.Tensor:
        """This rank's rows of ``full``, a tensor shaped like the whole parameter ``p``."""
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()

    def _local_parts(self, v: torch.Tensor) -> list[torch.Tensor]:
        """This rank's part of the flat vector ``v``, one tensor per parameter shard."""
        pieces = [c.view(s) for c, s in zip(torch.split(v, self.sizes), self.shapes)]
        return pieces if self.local else [self._rows(c, p) for c, p in zip(pieces, self._params)]

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """A parameter-shaped tensor (a ``DTensor`` shard, e.g. an optimizer state, or a plain one)
        in this operator's coordinates: its local rows (``vectors="local"``) or the whole tensor.
        A collective for a ``DTensor`` in ``"full"`` mode."""
        DTensor = _dtensor_type()
        if self.local and DTensor is not None and isinstance(t, DTensor):
            return t.to_local()
        return full_tensor(t)

    def localize(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole flat vector (``dimension`` entries, in
        ``model.parameters()`` order): its rows of each parameter's block, concatenated."""
        blocks = torch.split(whole.reshape(-1), [p.numel() for p in self._params])
        return torch.cat([self._rows(c.view(p.shape), p).reshape(-1) for c, p in zip(blocks, self._params)])

    def start_vector(self, init: torch.Tensor | None, seed: int, *, tol: float) -> torch.Tensor:
        """The solver's start in this operator's coordinates: ``init`` copied (its local part when
        it is a whole vector of ``dimension`` entries and the operator's vectors are local; checked
        as :func:`~catapult.curvature.start.start_vector` checks it: real, finite over the ranks
        and non-zero, taken for its direction where its norm overflows or underflows) with
        the seeded random part of every warm start to ``tol`` mixed in
        (:func:`~catapult.curvature.start.mixed_start`), or that standard normal vector seeded
        with ``seed`` alone, drawn a parameter at a time from a CPU generator (so every rank draws
        the same whole vector and keeps its part, without holding all of it)."""
        def drawn():
            return self._drawn(torch.Generator().manual_seed(int(seed)),
                               lambda shape, gen: torch.randn(shape, generator=gen, dtype=torch.float64))

        if init is None:
            return drawn()

        def checked_part() -> torch.Tensor:   # no collectives: a refusal is agreed over the ranks below
            flat = real_init(init).to(device=self.device)   # as start.start_vector: a real tensor
            if flat.numel() == self.numel:
                return flat
            if self.local and flat.numel() == self.dimension:
                return self.localize(flat)
            if self.local and init.dim() == 2 and init.shape[1] == self.numel:  # a block of this rank's parts
                raise init_size_error(init, self.numel, " on this rank")
            raise init_size_error(init, self.dimension, f" ({self.numel} on this rank)" if self.local else "")

        # one rank's bad init (another size, a complex one) raised there alone, and the others waited
        # in the norm's all-reduce until the process group's timeout
        source = agreed(checked_part, self.device) if self.local else checked_part()
        # only its direction counts: scaled by 2**-e (exact) where its largest entry over the ranks lies
        # outside the dtype's window (start.init_direction). Before, a plain norm: 2**-530 v was a norm
        # 2e-6 off (squares partly subnormal), a start not v's; only a norm of 0 or inf was rescaled
        v = init_direction(source, self.dtype, self.device, self.reduce)
        norm = scaled_norm(v, self.reduce)   # the same on every rank: a bad part refused on all of them
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError("init must be finite and non-zero")
        return mixed_start(v, drawn(), warm_start_weight(tol), self.reduce)

    def rademacher(self, gen: torch.Generator) -> torch.Tensor:
        """A vector of random signs in this operator's coordinates, drawn from the CPU generator
        ``gen`` as one whole vector of ``dimension`` entries would be (so every rank draws the
        same one, and one process the same again), a parameter at a time, keeping this rank's
        rows: the probes of the trace and the density."""
        return self._drawn(gen, lambda shape, g: torch.randint(0, 2, shape, generator=g) * 2 - 1)

    def _drawn(self, gen: torch.Generator, draw) -> torch.Tensor:
        """``draw(shape, gen)`` for each whole parameter in turn (CPU), this rank's rows kept."""
        parts = []
        for p in self._params:
            full = draw(p.shape, gen).to(self.device)
            parts.append((self._rows(full, p) if self.local else full).reshape(-1))
        return torch.cat(parts).to(device=self.device, dtype=self.dtype)

    def _loss(self, watch=None, found: dict | None = None) -> torch.Tensor:
        """This rank's loss, with its graph, at the parameters the model holds (under ``watch``, a
        :class:`~catapult.curvature.stateless.RenormedCopies`, where given), from the state the model had
        (:class:`~catapult.curvature.stateless.AttributesKept`); ``found``, where given, gets the gathered
        parameters the forward used (:func:`~catapult.curvature.sharded_reach.parameters_in_use`)."""
        state = self._kept.watch(self._model) if self._watch_state else contextlib.nullcontext()
        self._watch_state = False
        noted = contextlib.ExitStack()
        if found is not None:   # the first forward: the modules every rank calls agreed, the parameters noted
            noted.enter_context(same_sharded_modules(self._model, self.device))
            noted.enter_context(parameters_in_use(self._model, found))
        try:   # (also where the forward or loss_fn raised: the caller gets the model's state back)
            with (torch.enable_grad(), fixed_rng(self.seed, self.device), forms_for(self._forms),
                  watch if watch is not None else contextlib.nullcontext(), state, noted):
                loss = self._loss_fn(self._model(self._inputs), self._targets)
        finally:
            self._kept.restore()   # (the differences saw the state moved on: refused as kinks)
        if not (torch.is_tensor(loss) and loss.numel() == 1):
            raise ValueError("loss_fn must return a scalar tensor")
        refuse_complex(loss)
        return loss

    def _gradient_at(self, v: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, float]:
        """The union's flat gradient at ``theta + scale v`` (``theta`` when ``v`` is None), and
        this rank's loss there; the parameters and ``.grad`` are restored before it returns."""
        kept = [p.grad for p in self._params]
        reshard(self._model)   # the next forward must gather the shards moved here
        try:
            with torch.no_grad():
                if v is not None:
                    for p, part in zip(self._params, self._local_parts(v)):
                        p.to_local().add_(part.to(p.dtype), alpha=scale)
            for p in self._params:
                p.grad = None
            watch = RenormedCopies() if self._walk else None
            found = {} if v is None and self._first else None
            loss = self._loss(watch, found)
            if found is not None:   # the first gradient: the parameters each rank's loss reaches, before the
                self._first = False   # backward, whose reduce-scatters differ where they differ (sharded_reach)
                scan = graph_functions(loss, found)
                values = [float(n in scan.read) for n in self.names]
                if self._walk:
                    # a max_norm lookup renormalising rows at (or a few steps from) theta: 0.3847 for 0.3952
                    values += [0.0 if self._forms else float(scan.flagged),
                               float(watch.room < RENORM_STEPS * central_step(self._eps))]
                totals = all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()
                refuse_uneven_reach(self.names, totals[:len(self.names)], self._world)
            if self._walk:   # once, agreed: every rank runs the same forwards (FSDP's all-gathers)
                self._walk = False
                flagged, close = totals[len(self.names):]
                self._renorm_room = -math.inf if close else math.inf   # as every rank sees it
                refuse_renormed_differences(self, "distributed=True on a model sharded by fully_shard (finite "
                                            "differences)", "measure the model unsharded (exact products), or "
                                            "raise max_norm above the rows' norms")
                if flagged:
                    self._forms = True
                    del loss
                    reshard(self._model)   # a forward without a backward
                    loss = self._loss()
            with torch.enable_grad():
                try:
                    (loss.reshape(()) * self._scale).backward()
                except NotImplementedError as err:   # a custom Function without a backward
                    missing = functions_without_backward(loss)
                    if self._for_curvature and (refusal := no_backward_error(SHARDED, err, missing)) is not None:
                        raise refusal from err
                    err.functions_without_backward = missing   # (critical_lr's refusal names them too)
                    raise
            self._reached = [p.grad is not None for p in self._params]   # (False: FSDP's backward gave it none)
            pieces = [torch.zeros(shape, dtype=self.dtype, device=self.device) if p.grad is None
                      else self.part(p.grad).to(self.dtype) for p, shape in zip(self._params, self.shapes)]
            flat = torch.cat([g.reshape(-1) for g in pieces])
        except BaseException:   # a forward, loss_fn or backward that raised left the root gathered at theta + h u
            reset_after_error(self._model)
            raise
        finally:
            with torch.no_grad():
                for p, saved in zip(self._params, self._saved):
                    p.to_local().copy_(saved)
            for p, g in zip(self._params, kept):
                p.grad = g
        return flat, float(loss.detach())

    def difference_rounding(self, scale: torch.Tensor | None = None) -> float:
        """``eps ||scale * g(theta)|| / h`` at the first step ``h``, as every rank sees it: the scale of
        the rounding in a product of a unit vector, seen through a diagonal ``scale`` (this rank's
        rows, like the vectors; :data:`~catapult.curvature.certify.ROUNDING_FLOOR`)."""
        norm = (self._gradient_norm if scale is None
                else scaled_norm(self._grad_flat * scale, self.reduce))
        return self._eps * norm / central_step(self._eps)

    def gradients(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The union's gradient by parameter, ``[(parameter, gradient)]``, each gradient a
        ``DTensor`` placed like its parameter (e.g. for an optimizer's next-step direction)."""
        from torch.distributed.tensor import DTensor

        return [(p, DTensor.from_local(part.clone(), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()))
                for p, part in zip(self._params, self._local_parts(self._grad_flat))]

    def gradient(self) -> torch.Tensor:
        """The union's flat gradient at the current parameters (computed once, at construction)."""
        return self._grad_flat

    def unused_parameters(self) -> set[str]:
        """Names of the trainable parameters the union's loss reaches on no rank's shard (FSDP's
        backward gave them no gradient on any rank; found at construction, no collective here)."""
        return set(self._unused)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a full flat ``v`` (the same on every rank), by central differences, at the
        first step ``h, h/16, h/256`` whose one-sided differences agree (the class docstring)."""
        v = v.to(device=self.device, dtype=self.dtype)
        if v.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} elements (one per trainable "
                             f"parameter entry), got shape {tuple(v.shape)}")
        self.matvecs += 1
        norm = scaled_norm(v, self.reduce)
        if norm == 0:
            return torch.zeros_like(v)

        def product_at(h):
            plus, _ = self._gradient_at(v, h / norm)
            minus, _ = self._gradient_at(v, -h / norm)
            forward = scaled_norm(plus - self._grad_flat, self.reduce)
            gap = relative_gap(scaled_norm(plus + minus - 2.0 * self._grad_flat, self.reduce), forward,
                               self._noise)
            return gap, lambda accepted: plus.sub_(minus).mul_(norm / (2.0 * h))

        product, gap, retries = checked_difference(product_at, central_step(self._eps) * self.step_factor,
                                                   subject="this sharded model")
        self.difference_gap = max(self.difference_gap, gap)
        self.shrunk_steps += retries
        return product
