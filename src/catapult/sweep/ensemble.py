"""The ``ensemble`` executor: many sweep cells trained as one batched model.

Cells that share architecture, data and batch order but differ in per-member scalars
(learning rate, warmup/schedule, init seed, momentum, Adam betas/eps, weight decay, run length,
divergence factor, eval cadence) train *together*: the ``N`` members' MLP weights are stacked
into tensors ``W_l`` of shape ``[N, out, in]`` and the forward pass is one matmul per layer
(``x W_all^T`` over the shared input for layer 0, ``torch.bmm`` after), so a sweep of small
models runs at matmul speed instead of paying Python/autograd overhead per cell. For ReLU and
identity MLPs the gradient and the Hessian-vector product are derived by hand on the stacked
weights (no autograd graph) and run in sub-batches of members sized to the core's L2 cache
(:meth:`_Batch.group_size`) and cut in multiples of the thread count; on steps where no member
measures anything, each sub-batch's optimizer update follows its gradient at once, so no
full-size gradient is ever formed. Other activations go through autograd.

Exactness contract: each member reproduces :func:`catapult.train.run` for its cell (the step
semantics in that module's docstring) to float tolerance (batched reductions round
differently; nothing else differs). Per step that is float rounding; over a run, a cell at the
edge of stability (a catapult) amplifies it like any other perturbation: on
``configs/smoke/phase_diagram.yaml`` in float32 the final training losses of the two executors
differ by up to 16% in the largest-lr cells and by < 1e-6 in most, with the same statuses, while
in float64 (``dtype=float64``) they agree to 3e-11 in every cell:

* init: every member's model is built by :func:`catapult.train.build_model` (its own
  ``seeds(seed)[0]``, float32 on the CPU, then ``device``/``dtype``), masks included, and
  stacked; batches come from one shared :class:`catapult.train.BatchStream` (members of a
  group have the same ``data_seed``, or train full batch, where the seed does not matter);
* lambda_0 / sharpness: a batched Lanczos (:func:`batched_lanczos`) that runs the
  iteration of :func:`catapult.curvature.lanczos_top_eigenpair` for every member in lockstep
  (same start vector ``randn(P, sharpness_seed)``, same full re-orthogonalisation, thick
  restarts of an ``eval.sharpness_max_basis`` basis, per-member stopping test
  ``|beta s_m| / |theta| <= tol`` and ``max_iter``), on batched Hessian-vector products of
  ``sum_n L_n``, whose Hessian is block-diagonal over members (the hand-derived R-operator for
  ReLU/identity MLPs, double backprop otherwise; members that have stopped leave the product);
  Adam-family members get the pre-conditioned operator ``P^-1/2 H P^-1/2`` of :func:`catapult.curvature.preconditioned_sharpness`
  (``scale_by_group_lr=True``, coupled L2 for Adam). Warm starts, the reuse of the lambda_0
  estimate at ``t = 0`` and the matvec counts follow ``run``;
* optimizers: torch's SGD (heavy-ball momentum, coupled weight decay), Adam and AdamW update
  rules written on the stacked tensors, each parameter at ``lr_t * lr_mult`` of its
  :func:`catapult.param_groups` group; schedules are each cell's own
  :func:`catapult.train.build_schedule`;
* divergence (``train_loss_t`` not finite or ``> divergence_factor * train_loss_0``): the
  member's row ``t`` is logged, its result is yielded at once and it is dropped from the
  stacked tensors (frozen); the other members' arithmetic never mixes with it (per-member
  matmuls, per-member loss terms), so their results do not change;
* rows, thresholds (the member's own optimizer's :func:`catapult.train._threshold`) and the
  summary (:func:`catapult.train._summarize`) are built exactly as ``run`` builds them.
  ``summary["wall_time_s"]`` is the chunk's wall time divided by its number of members.

Grouping: cells are grouped by their config with the per-member keys (:data:`PER_MEMBER_KEYS`)
removed, plus the data seed for minibatch runs. A group is split into chunks whose estimated
memory (:func:`member_bytes`: parameters, optimizer state, Lanczos basis, activations of the
batch and the test set) fits ``memory_mb``; chunking changes nothing in the results.

Worker processes (``workers=k``, ``catapult sweep --workers k``): chunks train side by side in
``k`` spawned processes (:mod:`catapult.sweep.workers`), each group cut into at least ``k``
chunks; results stream back to the driver, which alone writes the store.

Fallback to the local path (one :func:`catapult.train.run` per cell, through ``run_fn``):
cells the batched engine cannot reproduce -- any model other than ``mlp`` (e.g. GPT), an
optimizer other than sgd/adam/adamw (GI-Adam, RAdam, ...), a warmup rule other than
``linear``, ``eval.sharpness_dtype`` different from ``dtype``, a loss other than mse /
cross_entropy, or a config key this module does not know set away from its default. If the
batched engine itself raises on a chunk, that chunk's remaining cells are run locally as well.
Every fallback is listed in :attr:`EnsembleExecutor.fallbacks` as ``(cell_id, reason)``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from catapult import config as cfg
from catapult.curvature import EigenEstimate
from catapult.sweep.executors import Cell, CellResult, Executor, RunFn, _worker_name, run_cell, torch_threads
from catapult.sweep.spec import canonical_json

__all__ = [
    "EnsembleExecutor",
    "PER_MEMBER_KEYS",
    "DEFAULT_MEMORY_MB",
    "unsupported_reason",
    "group_key",
    "member_bytes",
    "batched_lanczos",
    "run_ensemble",
]

#: Default memory budget of one chunk (MiB), ``--ensemble-memory-mb``.
DEFAULT_MEMORY_MB = 2048

#: Dotted keys (or whole sections) that may differ between members of one batched group.
# (declared on the config's fields: json_schema_extra={"per_member": True})
PER_MEMBER_KEYS = cfg.per_member_keys()

#: Leaf config keys whose meaning the batched engine reproduces; any other key (added to the
#: schema later) must be at its schema default for a cell to be batched.
_KNOWN_KEYS = frozenset({
    "name", "seed", "device", "dtype",
    "data.name", "data.root", "data.n_train", "data.n_test",
    "model.name", "model.width", "model.depth", "model.parametrization", "model.activation", "model.bias",
    "model.init", "model.base_width", "model.density", "model.base_density", "model.mask_method",
    "model.alpha_in", "model.alpha_out",
    "loss",
    "optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.betas", "optimizer.eps",
    "optimizer.weight_decay",
    "schedule.warmup", "schedule.warmup_steps", "schedule.lr_init", "schedule.power", "schedule.decay",
    "schedule.lr_final",
    "train.steps", "train.batch_size", "train.divergence_factor",
    "eval.sharpness_every", "eval.sharpness_tol", "eval.sharpness_max_iter", "eval.sharpness_kind",
    "eval.sharpness_hvp", "eval.sharpness_dtype", "eval.test_every", "eval.sharpness_max_basis",
    # a memory setting of the local engine (micro-batched HVPs, the same products to rounding);
    # the ensemble bounds its own memory by sub-batches and chunks, so it is accepted, not used
    "eval.sharpness_chunk_size",
})
_OPTIMIZERS = ("sgd", "adam", "adamw")


def _l2_cache_bytes(default: int = 2**20, root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Size of one core's level-2 cache, from Linux's sysfs (``default`` where it is not known)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        for index in sorted(Path(root).glob("index*")):
            if (index / "level").read_text().strip() == "2" and \
                    (index / "type").read_text().strip() in ("Unified", "Data"):
                size = (index / "size").read_text().strip()
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return default


# Bytes of the largest activation of one sub-batch in the hand-derived passes
# (_Batch.group_size): 3/4 of a core's L2 cache, so the sub-batch's few live activations stay
# close to it. Measured on a 1 MiB-L2 EPYC (bench/RESULTS.md): sub-batches of 1-2 members of
# the width-64 MLP (0.3-0.8 MiB) ran 1.6x faster than 4-5 members (1.5-4 MiB), which fall out
# of L2; within 0.3-0.8 MiB the size made no difference, and larger means fewer ops.
_GROUP_BYTES = 3 * _l2_cache_bytes() // 4
# Layers with fewer outputs run their forward GEMM transposed (see _Batch.forward).
_NARROW = 32
_LOSSES = ("mse", "cross_entropy")


# --------------------------------------------------------------------------------------------
# Grouping and memory


def _leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """Why the batched engine cannot run ``config`` (a validated run config), or ``None``."""
    if config["model"]["name"] != "mlp":
        return f"model.name={config['model']['name']!r} (the ensemble batches the mlp only)"
    if config["optimizer"]["name"] not in _OPTIMIZERS:
        return f"optimizer.name={config['optimizer']['name']!r} (batched: {', '.join(_OPTIMIZERS)})"
    if config["schedule"]["warmup"] != "linear":
        return f"schedule.warmup={config['schedule']['warmup']!r} (batched: linear)"
    if config["loss"] not in _LOSSES:
        return f"loss={config['loss']!r} (batched: {', '.join(_LOSSES)})"
    ev = config["eval"]
    if ev["sharpness_dtype"] not in (None, config["dtype"]):
        return f"eval.sharpness_dtype={ev['sharpness_dtype']!r} differs from dtype={config['dtype']!r}"
    kind = ev["sharpness_kind"]
    if kind == "preconditioned" and config["optimizer"]["name"] == "sgd" and ev["sharpness_every"] > 0:
        return "eval.sharpness_kind=preconditioned with sgd (the local engine reports the error)"
    for key, value in _leaves(config):
        if key in _KNOWN_KEYS or key.startswith("sweep"):
            continue
        try:
            default = cfg.get(key).default
        except KeyError:
            return f"unknown config key {key!r}"
        if canonical_json(value) != canonical_json(default):
            return f"{key}={value!r} (a setting the ensemble engine does not reproduce)"
    return None


def _data_seed(config: Mapping[str, Any]) -> int | None:
    from catapult.train import seeds

    return seeds(config["seed"])[1] if config["train"]["batch_size"] is not None else None


def group_key(config: Mapping[str, Any]) -> str:
    """Cells with equal keys train together: the config without :data:`PER_MEMBER_KEYS`,
    plus the data seed when batches are drawn (minibatch SGD)."""
    shared = copy.deepcopy(dict(config))
    for key in PER_MEMBER_KEYS:
        *sections, leaf = key.split(".")
        node = shared
        for part in sections:
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    shared.pop("sweep", None)
    shared["_data_seed"] = _data_seed(config)
    return canonical_json(shared)


def _layer_dims(config: Mapping[str, Any], in_features: int, out_features: int) -> list[int]:
    m = config["model"]
    return [in_features] + [m["width"]] * (m["depth"] - 1) + [out_features]


def member_bytes(config: Mapping[str, Any], in_features: int, out_features: int, n_batch: int,
                 n_test: int) -> int:
    """Estimated peak bytes one member adds to a chunk.

    ``P`` parameters x (param, grad, two optimizer states, mask, ``max_basis + 4`` Lanczos
    vectors: the ``eval.sharpness_max_basis`` basis and start/warm/preconditioner vectors, HVP
    graph ~3 copies)
    plus activations: ``n_batch x sum(widths)`` x 8 (forward values, activation masks,
    backward, and the double-backprop graph of a Hessian-vector product) and
    ``n_test x sum(widths)`` x 2 for the test evaluation.
    """
    dims = _layer_dims(config, in_features, out_features)
    bias = config["model"]["bias"]
    n_params = sum(dims[i] * dims[i + 1] + (dims[i + 1] if bias else 0) for i in range(len(dims) - 1))
    itemsize = 8 if config["dtype"] == "float64" else 4
    sharp = config["eval"]["sharpness_every"] > 0 or cfg.lr_needs_lambda0(config["optimizer"]["lr"])
    per_param = 5 + 4 + (config["eval"]["sharpness_max_basis"] + 4 if sharp else 0)
    acts = sum(dims[1:])
    return itemsize * (n_params * per_param + n_batch * acts * 8 + n_test * acts * 2)


# --------------------------------------------------------------------------------------------
# Batched Lanczos


def batched_lanczos(matvec, v0: torch.Tensor, *, tol: Sequence[float], max_iter: Sequence[int],
                    max_basis: int = 20) -> list[EigenEstimate]:
    """Top eigenpairs of ``m`` symmetric operators at once, member by member the iteration of
    :func:`catapult.curvature.lanczos_top_eigenpair`.

    ``matvec(active, V)`` applies operators ``active`` (indices into ``0..m-1``) to the rows of
    ``V`` (``[len(active), n]``) and returns ``[len(active), n]``. ``v0`` is ``[m, n]`` (non-zero
    rows). All members start together, so their Krylov bases have the same size at every
    iteration and restart at the same time (thick restart to the top ``max_basis // 2`` Ritz
    vectors when the basis holds ``min(max_basis, n)``); only their stopping differs: member
    ``k`` stops when ``|beta s_m| / |theta| <= tol[k]`` or the space is invariant
    (``converged``), or after ``max_iter[k]`` matvecs, and is dropped from further products.
    A member whose product is non-finite gets ``value = nan``, ``converged = False`` and its
    normalised start vector. Returns one :class:`~catapult.curvature.EigenEstimate` per row.
    """
    m, n = v0.shape
    capacity = min(int(max_basis), n)
    keep = max(1, capacity // 2)
    eps = torch.finfo(v0.dtype).eps
    norm0 = torch.linalg.vector_norm(v0, dim=1)
    start = v0 / norm0[:, None]
    basis = v0.new_empty((m, capacity, n))
    basis[:, 0] = start
    T = np.zeros((m, capacity, capacity))
    size, matvecs = 1, 0
    active = np.arange(m)  # the members still iterating ...
    rows = np.arange(m)    # ... and their rows in basis / start / T
    results: list[EigenEstimate | None] = [None] * m
    while len(active):
        j = size - 1
        q = basis[:, j]
        if len(rows) == basis.shape[0]:
            w = matvec(active, q).to(q.dtype).clone()
        else:
            # rows of stopped members ride along in the (cheap) re-orthogonalisation until
            # half of the rows have stopped, and are compacted away then: a gather of the
            # whole basis at every stop costs more than the products at small n
            where = torch.as_tensor(rows, device=q.device)
            w = torch.zeros_like(q)
            w[where] = matvec(active, q[where]).to(q.dtype)
        matvecs += 1
        if j > 0:
            couple = torch.as_tensor(T[:, :j, j], dtype=q.dtype, device=q.device)
            w.sub_(torch.bmm(couple[:, None, :], basis[:, :j]).squeeze(1))
        alpha_t = (q * w).sum(dim=1)
        w.sub_(alpha_t[:, None] * q)
        h = torch.bmm(basis[:, :size], w[:, :, None]).squeeze(2)
        w.sub_(torch.bmm(h[:, None, :], basis[:, :size]).squeeze(1))
        alpha_t = alpha_t + h[:, j]
        beta_t = torch.linalg.vector_norm(w, dim=1)
        alphas, betas = torch.stack([alpha_t, beta_t.to(alpha_t.dtype)]).tolist()
        finite = np.array([math.isfinite(a) and math.isfinite(b) for a, b in zip(alphas, betas)])
        T[:, j, j] = np.where(finite, alphas, 0.0)
        ritz_values, ritz_vectors = np.linalg.eigh(T[rows, : j + 1, : j + 1])
        done = np.zeros(len(active), dtype=bool)
        for k in range(len(active)):
            member, r = int(active[k]), int(rows[k])
            if not finite[r]:
                results[member] = EigenEstimate(float("nan"), start[r].clone(), matvecs, False, float("nan"))
                done[k] = True
                continue
            beta = betas[r]
            theta, s = float(ritz_values[k, -1]), ritz_vectors[k, :, -1]
            scale = max(abs(ritz_values[k, 0]), abs(ritz_values[k, -1]))
            residual = abs(beta * float(s[-1]))
            rel = residual / abs(theta) if theta != 0 else (0.0 if residual == 0 else float("inf"))
            invariant = beta <= 10 * eps * max(scale, eps) * math.sqrt(n) or j + 1 == n
            converged = rel <= tol[member] or invariant
            if converged or matvecs == max_iter[member]:
                vector = torch.as_tensor(s, dtype=q.dtype, device=q.device) @ basis[r, :size]
                vector /= torch.linalg.vector_norm(vector)
                results[member] = EigenEstimate(theta, vector, matvecs, bool(converged), rel)
                done[k] = True
        if done.all():
            break
        betas_arr = np.asarray(betas)
        # stopped rows may have beta = 0 (or nan): keep their (unused) next vector finite
        q_next = w / torch.where(beta_t > 0, beta_t, torch.ones_like(beta_t))[:, None]
        if size == capacity:
            for k in np.flatnonzero(~done):
                r = int(rows[k])
                order = np.argsort(ritz_values[k])[::-1][:keep]
                S_k = torch.as_tensor(np.ascontiguousarray(ritz_vectors[k][:, order]), dtype=q.dtype,
                                      device=q.device)
                Y = S_k.T @ basis[r, :size]
                basis[r, :keep] = Y
                T[r] = 0.0
                T[r, np.arange(keep), np.arange(keep)] = ritz_values[k][order]
                T[r, keep, :keep] = T[r, :keep, keep] = betas_arr[r] * ritz_vectors[k][-1, order]
            basis[:, keep] = q_next
            size = keep + 1
        else:
            basis[:, size] = q_next
            T[:, size, j] = T[:, j, size] = np.where(np.isfinite(betas_arr), betas_arr, 0.0)
            size += 1
        if done.any():
            active, rows = active[~done], rows[~done]
            if len(rows) <= basis.shape[0] // 2:
                sel = torch.as_tensor(rows, device=basis.device)
                basis, start, T = basis[sel], start[sel], T[rows]
                rows = np.arange(len(rows))
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The batched engine


def _even_ranges(n: int, size: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``[(start, end)]`` covering ``range(n)`` in ``ceil(n / size)`` ranges of at most ``size``,
    as even as the count allows (10 in ranges of at most 4: 4 + 3 + 3). With ``multiple`` > 1
    (and ``size >= multiple``) ``size`` is first rounded down to a multiple of it and every
    range but the last holds a multiple of it (10 by 4 in multiples of 2: 4 + 4 + 2)."""
    if n == 0:
        return []
    size, multiple = max(1, size), max(1, multiple)
    if size < multiple:
        multiple = 1
    size -= size % multiple
    count = -(-n // size)
    units, rest = divmod(n, multiple)
    base, extra = divmod(units, count)
    sizes = [(base + (i < extra)) * multiple for i in range(count)]
    sizes[-1] += rest
    bounds = np.cumsum([0] + sizes).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class _Member:
    cell: Cell
    config: dict
    steps: int
    sharpness_every: int
    test_every: int
    divergence_factor: float
    tol: float
    max_iter: int
    lr_spec: Any
    sharpness_seed: int
    threshold_opt: torch.optim.Optimizer | None = None
    lr_mult0: float = 1.0
    lr_trgt: float | None = None
    schedule: Any = None
    lambda_0: float | None = None
    lambda0_estimate: EigenEstimate | None = None
    warm: torch.Tensor | None = None
    metrics: list = field(default_factory=list)
    loss_0: float | None = None
    status: str = "finished"
    diverged_at: int | None = None
    matvecs_total: int = 0
    measurements: int = 0
    unconverged: int = 0
    # per-parameter optimizer hyper-parameters (from the member's own torch optimizer groups)
    hyper: list = field(default_factory=list)


def _threshold_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A one-parameter copy of ``optimizer``'s first group, for ``train._threshold``."""
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    return type(optimizer)([dict(group, params=[torch.zeros(1, requires_grad=True)])])


class _Batch:
    """The stacked state of the members still training (rows in the order of ``members``)."""

    def __init__(self, members: list[_Member], models: list[torch.nn.Module], kind: str, loss: str,
                 optimizer: str, max_basis: int = 20):
        self.members = members
        self.max_basis = max_basis  # Krylov vectors of the batched Lanczos (eval.sharpness_max_basis)
        self.kind = kind
        self.loss_name = loss
        self.optimizer = optimizer
        layers0 = models[0].layers
        self.activation = models[0].activation
        self.relu = type(self.activation) is torch.nn.ReLU
        # ReLU and identity nets get the hand-derived gradient and Hessian-vector product (their
        # activation's second derivative is zero, as autograd treats it); others use autograd
        self.hand = self.relu or type(self.activation) is torch.nn.Identity
        self.group_bytes = _GROUP_BYTES
        # torch's CPU threads: a batched GEMM splits its batch over them, so sub-batches hold a
        # multiple of this many members (3 members on 2 threads ran at ~2/3 of the speed of 2)
        self.threads = torch.get_num_threads()
        self.mults = [(float(l.multiplier), float(l.bias_multiplier)) for l in layers0]
        self.has_bias = layers0[0].bias is not None
        self.params: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []  # one per parameter (None for biases / dense)
        for i, layer in enumerate(layers0):
            self.params.append(torch.stack([m.layers[i].weight.detach() for m in models]).contiguous())
            mask = layer.mask if getattr(layer, "mask", None) is not None else None
            self.masks.append(torch.stack([m.layers[i].mask for m in models]).contiguous() if mask is not None else None)
            if self.has_bias:
                self.params.append(torch.stack([m.layers[i].bias.detach() for m in models]).contiguous())
                self.masks.append(None)
        self.shapes = [p.shape[1:] for p in self.params]
        self.numels = [int(np.prod(s)) for s in self.shapes]
        self.n_params = sum(self.numels)
        self.state: dict[str, list[torch.Tensor | None]] = {}
        self.step_count = 0
        self.hp: list[dict[str, list[float]]] = []

    def set_hyper(self) -> None:
        """Per-parameter, per-member hyper-parameters (python floats) from ``member.hyper``."""
        self.hp = [{key: [float(mb.hyper[k][key]) for mb in self.members] for key in self.members[0].hyper[k]}
                   for k in range(len(self.params))]

    def col(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """Per-member scalars (computed in double on the host) as ``[M, 1, ...]`` like ``like``."""
        shape = (len(values),) + (1,) * (like.dim() - 1)
        return torch.tensor(list(values), device=like.device, dtype=like.dtype).view(shape)

    # ---- forward / loss
    def forward(self, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                x: torch.Tensor, hidden: list | None = None) -> torch.Tensor:
        """Outputs ``[M, B, C]`` of the stacked MLPs on a shared input ``x`` ``[B, ...]``;
        ``hidden`` (a list), if given, receives every hidden layer's activation ``[M, B, w]``."""
        h = x.flatten(1)
        shared = True
        per_layer = 2 if self.has_bias else 1
        n_layers = len(self.params) // per_layer
        for i in range(n_layers):
            W = params[i * per_layer]
            if masks[i * per_layer] is not None:
                W = W * masks[i * per_layer]
            M, out_f, in_f = W.shape
            # layer 0 reads the shared input (expanded, not copied); bias and multipliers are
            # fused into the batched GEMM: out = bias_scale * b + scale * h W^T
            hb = h.expand(M, *h.shape) if shared else h
            shared = False
            scale, bias_scale = self.mults[i]
            b = params[i * per_layer + 1] if self.has_bias else None
            if out_f < _NARROW:
                # a narrow layer (the readout) as (W h^T)^T: the [B, in] x [in, out] batched GEMM
                # with a small ``out`` runs at ~1/5 of the matmul peak on the CPU, this ~3x faster
                # (made contiguous again: cheap at this width, and argmax/softmax need it)
                if b is None:
                    out = torch.bmm(W, hb.transpose(1, 2)).transpose(1, 2).contiguous()
                    if scale != 1.0:
                        out = out * scale
                else:
                    out = torch.baddbmm(b[:, :, None], W, hb.transpose(1, 2), beta=bias_scale,
                                        alpha=scale).transpose(1, 2).contiguous()
            elif b is None:
                out = torch.bmm(hb, W.transpose(1, 2))
                if scale != 1.0:
                    out = out * scale
            else:
                out = torch.baddbmm(b[:, None, :], hb, W.transpose(1, 2), beta=bias_scale, alpha=scale)
            if i == n_layers - 1:
                h = out
            elif self.relu:
                h = torch.relu_(out)  # the GEMM's output is not saved for backward: in place is safe
            else:
                h = self.activation(out)
            if hidden is not None and i < n_layers - 1:
                hidden.append(h)
        return h

    @staticmethod
    def mse_target(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
        """The MSE target ``[B, C]`` of labels (one-hot) or targets ``y``."""
        if y.is_floating_point() or y.is_complex():
            return y.to(dtype)
        return F.one_hot(y.long(), n_classes).to(dtype)

    def losses(self, out: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-member loss ``[M]`` (the formulas of :mod:`catapult.losses`); ``target``: the
        :meth:`mse_target` of ``y``, if the caller has it."""
        M, B, C = out.shape
        labels = not (y.is_floating_point() or y.is_complex())
        if self.loss_name == "mse":
            target = self.mse_target(y, C, out.dtype) if target is None else target
            return 0.5 * (out - target).pow(2).mean(dim=(1, 2))
        flat = out.reshape(M * B, C)
        if labels:
            per = F.cross_entropy(flat, y.reshape(-1).long().repeat(M), reduction="none")
        else:
            per = F.cross_entropy(flat, y.reshape(-1, C).to(out.dtype).repeat(M, 1), reduction="none")
        return per.view(M, B).mean(dim=1)

    @staticmethod
    def accuracies(out: torch.Tensor, y: torch.Tensor) -> list[float]:
        if out.shape[1] == 0:
            return [float("nan")] * out.shape[0]
        # max(...).indices is argmax (the first maximal index; nan counts as maximal), ~4x faster
        # than argmax over a last dimension of ~10 classes on the CPU
        predicted = out.max(dim=-1).indices
        labels = y if not (y.is_floating_point() or y.is_complex()) else y.max(dim=-1).indices
        return (predicted == labels.reshape(1, -1)).double().mean(dim=1).tolist()

    def flat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(flat, self.numels, dim=1)
        return [p.reshape((flat.shape[0],) + tuple(s)) for p, s in zip(parts, self.shapes)]

    # ---- hand-derived gradient and Hessian-vector product (ReLU / identity MLPs)
    def group_size(self, n_batch: int) -> int:
        """Members per sub-batch of the hand-derived passes. On the CPU the largest activation of
        a sub-batch (``[S, n_batch, max width]``) stays within ``group_bytes``, so the working
        set stays in cache and large temporaries are not mapped and faulted in afresh at every
        op (at N = 128, full batch, that costs more than the GEMMs). On an accelerator all
        members form one sub-batch: there the cost is the number of kernel launches."""
        if self.params[0].device.type != "cpu":
            return max(1, self.params[0].shape[0])
        width = max(s[0] for s in self.shapes[:: 2 if self.has_bias else 1])
        per = max(1, n_batch * width * self.params[0].element_size())
        return max(1, int(self.group_bytes // per))

    def sub_batches(self, n_members: int, n_batch: int) -> list[tuple[int, int]]:
        """``[(start, end)]`` member ranges of the hand-derived passes: at most
        :meth:`group_size` members each, in as even ranges as the count allows, each a
        multiple of the CPU thread count where the size allows (see :func:`_even_ranges`)."""
        cpu = self.params[0].device.type == "cpu"
        return _even_ranges(n_members, self.group_size(n_batch), self.threads if cpu else 1)

    def _layers(self, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]):
        """``[(W_hat, b)]`` per layer: masked weights and biases (``None`` without bias)."""
        per_layer = 2 if self.has_bias else 1
        layers = []
        for i in range(len(params) // per_layer):
            W, mask = params[i * per_layer], masks[i * per_layer]
            layers.append((W * mask if mask is not None else W, params[i * per_layer + 1] if self.has_bias else None))
        return layers

    def _act_grad(self, grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``act'(z) * grad`` from the activation's output ``h`` (ReLU: ``h > 0``, as autograd),
        in place: ``grad`` is a temporary of the caller."""
        if not self.relu:
            return grad
        return torch.ops.aten.threshold_backward.grad_input(grad, h, 0, grad_input=grad)

    def dloss(self, out: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """``(dL_m/dout, curvature)``: the per-member loss gradient ``[M, B, C]`` and what
        :meth:`dloss_hvp` needs for the output Hessian (``None`` for MSE; softmax and the
        target mass for cross-entropy). ``target``: as in :meth:`losses`."""
        M, B, C = out.shape
        labels = not (y.is_floating_point() or y.is_complex())
        if self.loss_name == "mse":
            target = self.mse_target(y, C, out.dtype) if target is None else target
            return (out - target) * (1.0 / (B * C)), None
        p = torch.softmax(out, dim=-1)
        if labels:
            g = p.clone()
            g.view(M * B, C)[torch.arange(M * B, device=out.device), y.reshape(-1).long().repeat(M)] -= 1.0
            mass = None
        else:
            target = y.reshape(B, C).to(out.dtype)
            mass = target.sum(dim=-1, keepdim=True)
            g = p * mass - target
        return g * (1.0 / B), (p, mass)

    def dloss_hvp(self, R: torch.Tensor, curvature: Any) -> torch.Tensor:
        """The output Hessian of the per-member loss applied to ``R`` ``[M, B, C]``."""
        M, B, C = R.shape
        if curvature is None:
            return R * (1.0 / (B * C))
        p, mass = curvature
        out = p * (R - (p * R).sum(dim=-1, keepdim=True))
        if mass is not None:
            out = out * mass
        return out * (1.0 / B)

    def _layer_grads(self, i: int, gW: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
        """Layer ``i``'s parameter gradients ``[gb, gW]`` (``[gW]`` without bias) from the raw
        weight product ``gW = g^T h_{i-1}`` and the output delta ``g``: both carry the layer's
        multipliers (``out = c b + a h W^T``), in place on ``gW``."""
        scale, bias_scale = self.mults[i]
        if scale != 1.0:
            gW.mul_(scale)
        if not self.has_bias:
            return [gW]
        gb = g.sum(dim=1)
        if bias_scale != 1.0:
            gb.mul_(bias_scale)
        return [gb, gW]

    def _backprop(self, g: torch.Tensor, weights: Sequence[torch.Tensor],
                  hidden: list) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields ``(i, g_i)``, the delta ``dL/dz_i`` of every layer of one sub-batch (masked
        ``weights`` ``W_i``) from the last (``g``, the output gradient) to the first:
        ``g_{i-1} = act'(z_{i-1}) * a_i g_i W_i``, computed once the caller has used ``g_i``
        (so it is still in cache)."""
        for i in reversed(range(len(weights))):
            yield i, g
            if i > 0:
                dh = torch.bmm(g, weights[i])
                scale = self.mults[i][0]
                if scale != 1.0:
                    dh.mul_(scale)
                g = self._act_grad(dh, hidden[i - 1])

    def _backward(self, g: torch.Tensor, weights: Sequence[torch.Tensor], hidden: list,
                  x: torch.Tensor) -> list[torch.Tensor]:
        """The parameter gradients of one sub-batch (each ``[S, ...]``, in the order of
        ``params``) from its output gradient ``g``."""
        grads = []
        for i, g_i in self._backprop(g, weights, hidden):
            prev = x.expand(g.shape[0], *x.shape) if i == 0 else hidden[i - 1]
            grads += self._layer_grads(i, torch.bmm(g_i.transpose(1, 2), prev), g_i)
        return grads[::-1]

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor, need_grads: bool,
                   step: list[dict[str, Any]] | None = None):
        """``(losses [M], accuracies, grads)`` of all members on ``(x, y)`` by the hand-derived
        backward pass, sub-batch by sub-batch (:meth:`group_size`); ``grads`` (as
        ``torch.autograd.grad`` of ``sum_m L_m``, masks applied) is ``None`` unless
        ``need_grads``.

        With ``step`` (:meth:`step_scalars` of this step) each sub-batch's gradients are
        applied by :meth:`apply_update` as soon as they are computed, while they are in cache,
        and not returned (``grads`` is ``None``): the same arithmetic as :meth:`update` after
        this call, for steps where nothing else needs the parameters before the update."""
        M = len(self.members)
        xf = x.flatten(1)
        fused = step is not None
        n_classes = self.params[-2 if self.has_bias else -1].shape[1]
        target = self.mse_target(y, n_classes, self.params[0].dtype) if self.loss_name == "mse" else None
        grads = [torch.empty_like(p) for p in self.params] if need_grads and not fused else None

        def one(s: int, e: int):
            params = [p[s:e] for p in self.params]
            masks = [m[s:e] if m is not None else None for m in self.masks]
            hidden: list = []
            out = self.forward(params, masks, xf, hidden)
            if need_grads or fused:
                weights = [W for W, _ in self._layers(params, masks)]
                parts = self._backward(self.dloss(out, y, target)[0], weights, hidden, xf)
                parts = [part * masks[k] if masks[k] is not None else part for k, part in enumerate(parts)]
                if fused:
                    self.apply_update(step, parts, s, e)
                else:
                    for k, part in enumerate(parts):
                        grads[k][s:e] = part
            return self.losses(out, y, target), self.accuracies(out, y)

        done = [one(s, e) for s, e in self.sub_batches(M, xf.shape[0])]
        return torch.cat([loss for loss, _ in done]), [a for _, accs in done for a in accs], grads

    def hvp_state(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> dict:
        """What :meth:`hvp` needs at the current parameters of members ``rows`` on ``(x, y)``:
        masked weights, hidden activations, backprop deltas and the output curvature. The
        activations, deltas and curvature are built sub-batch by sub-batch (see
        :meth:`group_size`) and kept per sub-batch (``parts``, with ``locate[position] =
        (part, offset)``): joining them into full-size tensors cost ~10% of a sharpness cell."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        params = [p[idx] for p in self.params]
        masks = [m[idx] if m is not None else None for m in self.masks]
        layers = self._layers(params, masks)
        xf = x.flatten(1)

        def one(s: int, e: int):
            hidden: list = []
            out = self.forward([p[s:e] for p in params], [m[s:e] if m is not None else None for m in masks],
                               xf, hidden)
            g, curvature = self.dloss(out, y)
            deltas = [g_i for _, g_i in self._backprop(g, [W[s:e] for W, _ in layers], hidden)][::-1]
            return hidden, deltas, curvature

        spans = self.sub_batches(len(rows), xf.shape[0])
        parts = [one(s, e) for s, e in spans]
        locate = [(k, r - s) for k, (s, e) in enumerate(spans) for r in range(s, e)]
        return dict(W=[W for W, _ in layers], masks=masks, parts=parts, locate=locate, x=xf)

    def hvp(self, state: dict, V: torch.Tensor, where: Sequence[int] | None = None) -> torch.Tensor:
        """Hessian-vector products ``H_m v_m`` (``[A, P]``) of the members of ``state`` at
        positions ``where`` (all, in order, by default; row ``a`` of ``V`` is member
        ``where[a]``): the R-operator of the forward and backward pass, sub-batch by sub-batch,
        equal to the double backprop of ``sum_m L_m`` to rounding. A sub-batch reads its
        members' state as a view where they are adjacent and gathers only its own slice
        otherwise, so members dropping out of a Lanczos run cost no copy of the whole state."""
        x = state["x"]
        per_layer = 2 if self.has_bias else 1
        n_layers = len(state["W"])
        out = V.new_empty(V.shape)
        positions = list(range(V.shape[0])) if where is None else [int(w) for w in where]
        if len(positions) != V.shape[0]:
            raise ValueError(f"hvp: {V.shape[0]} vectors for {len(positions)} members")

        def one(s: int, e: int) -> None:
            pos = positions[s:e]
            if pos[-1] - pos[0] == e - s - 1 and pos == sorted(pos):
                rows = slice(pos[0], pos[-1] + 1)
            else:
                rows = torch.as_tensor(pos, dtype=torch.long, device=x.device)
            pick = (lambda t: t[rows] if t is not None else None)
            # runs of members adjacent within one state part: one view each, joined if several
            runs: list[list[int]] = []
            for r in pos:
                k, off = state["locate"][r]
                if runs and runs[-1][0] == k and runs[-1][2] == off:
                    runs[-1][2] += 1
                else:
                    runs.append([k, off, off + 1])

            def part(field: int, i: int | None = None) -> torch.Tensor:
                pieces = [(state["parts"][k][field] if i is None else state["parts"][k][field][i])[a:b]
                          for k, a, b in runs]
                return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

            vs = self.split(V[s:e])
            VW, Vb = [], []
            for i in range(n_layers):
                v, mask = vs[i * per_layer], pick(state["masks"][i * per_layer])
                VW.append(v * mask if mask is not None else v)
                Vb.append(vs[i * per_layer + 1] if self.has_bias else None)
            W = [pick(w) for w in state["W"]]
            hidden = [part(0, i) for i in range(n_layers - 1)]
            deltas = [part(1, i) for i in range(n_layers)]
            n = e - s
            xb = x.expand(n, *x.shape)
            # R-forward: Rz_i = a_i (h_{i-1} VW_i^T + Rh_{i-1} W_i^T) + c_i Vb_i
            Rh: list = []
            R = None
            for i in range(n_layers):
                scale, bias_scale = self.mults[i]
                prev = xb if i == 0 else hidden[i - 1]
                if W[i].shape[1] < _NARROW:  # transposed, as in forward
                    Rz = torch.bmm(VW[i], prev.transpose(1, 2))
                    if i > 0:
                        Rz.baddbmm_(W[i], Rh[-1].transpose(1, 2))
                    Rz = Rz.transpose(1, 2)
                else:
                    Rz = torch.bmm(prev, VW[i].transpose(1, 2))
                    if i > 0:
                        Rz.baddbmm_(Rh[-1], W[i].transpose(1, 2))
                if scale != 1.0:
                    Rz.mul_(scale)
                if Vb[i] is not None:
                    Rz.add_(Vb[i][:, None, :], alpha=bias_scale)
                if i < n_layers - 1:
                    Rh.append(self._act_grad(Rz, hidden[i]))
                else:
                    R = Rz
            curvature = state["parts"][0][2]
            if curvature is not None:  # (softmax, target mass): the mass is shared
                curvature = (part(2, 0), curvature[1])
            Rg = self.dloss_hvp(R, curvature)
            # R-backward: R(dW_i) = a_i (Rg_i^T h_{i-1} + g_i^T Rh_{i-1}), R(db_i) = c_i sum Rg_i,
            # R(dh_{i-1}) = a_i (Rg_i W_i + g_i VW_i), Rg_{i-1} = act'(z_{i-1}) R(dh_{i-1})
            parts = []
            for i in reversed(range(n_layers)):
                scale = self.mults[i][0]
                prev = xb if i == 0 else hidden[i - 1]
                g = deltas[i]
                RW = torch.bmm(Rg.transpose(1, 2), prev)
                if i > 0:
                    RW.baddbmm_(g.transpose(1, 2), Rh[i - 1])
                mask = state["masks"][i * per_layer]
                if mask is not None:
                    RW.mul_(pick(mask))
                parts += self._layer_grads(i, RW, Rg)
                if i > 0:
                    Rdh = torch.bmm(Rg, W[i])
                    Rdh.baddbmm_(g, VW[i])
                    if scale != 1.0:
                        Rdh.mul_(scale)
                    Rg = self._act_grad(Rdh, hidden[i - 1])
            torch.cat([t.reshape(n, -1) for t in reversed(parts)], dim=1, out=out[s:e])

        for s, e in self.sub_batches(V.shape[0], x.shape[0]):
            one(s, e)
        return out

    # ---- compaction
    def keep(self, rows: list[int]) -> None:
        """Keep only members ``rows`` (positions), in that order."""
        if len(rows) == len(self.members):
            return
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.members = [self.members[r] for r in rows]
        self.params = [p[idx].contiguous() for p in self.params]
        self.masks = [m[idx].contiguous() if m is not None else None for m in self.masks]
        self.hp = [{k: [v[r] for r in rows] for k, v in e.items()} for e in self.hp]
        self.state = {k: [s[idx].contiguous() if s is not None else None for s in v] for k, v in self.state.items()}

    # ---- the optimizer update (torch's single-tensor rules on stacked tensors)
    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lrs: Sequence[float]) -> None:
        """One optimizer step of every member from the stacked gradients ``grads``: ``lrs[m]``
        is member m's ``lr_t``; parameter k of member m moves at ``lrs[m] * lr_mult[k][m]``.
        Applied span by span (:meth:`update_spans`, :meth:`apply_update`), so temporaries stay
        in cache."""
        scalars = self.step_scalars(lrs)
        for s, e in self.update_spans():
            self.apply_update(scalars, [g[s:e] for g in grads], s, e)

    def update_spans(self) -> list[tuple[int, int]]:
        """Member ranges of :meth:`update`: on the CPU as many members as keep parameters,
        gradients, optimizer state and a temporary (4 copies) within ``group_bytes``."""
        M = len(self.members)
        if self.params[0].device.type != "cpu":
            return _even_ranges(M, M)
        per = 4 * self.n_params * self.params[0].element_size()
        return _even_ranges(M, max(1, int(self.group_bytes // per)), self.threads)

    @torch.no_grad()
    def step_scalars(self, lrs: Sequence[float]) -> list[dict[str, Any]]:
        """Starts one optimizer step of all members (allocates missing state, counts Adam's
        step) and returns, per parameter, the step's per-member scalars as ``[M, 1, ...]``
        columns for :meth:`apply_update`. Scalars are formed in double on the host, as torch
        forms them from the python floats of its param groups::

            SGD:   buf = g (first step) | momentum * buf + g;   p -= lr * buf
            Adam:  m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2;
                   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        with ``g = grad + wd * p`` (coupled L2: SGD, Adam) or ``p *= 1 - lr wd`` first (AdamW).
        """
        M = len(self.members)
        out: list[dict[str, Any]] = []
        if self.optimizer == "sgd":
            bufs = self.state.setdefault("momentum_buffer", [None] * len(self.params))
            for k, p in enumerate(self.params):
                hp = self.hp[k]
                c: dict[str, Any] = {"lr": self.col([lrs[m] * hp["lr_mult"][m] for m in range(M)], p),
                                     "momentum": self.col(hp["momentum"], p), "first": bufs[k] is None}
                if any(hp["weight_decay"]):
                    c["wd"] = self.col(hp["weight_decay"], p)
                if bufs[k] is None:
                    bufs[k] = torch.empty_like(p)
                out.append(c)
            return out
        self.step_count += 1
        t = self.step_count
        avg = self.state.setdefault("exp_avg", [None] * len(self.params))
        avg_sq = self.state.setdefault("exp_avg_sq", [None] * len(self.params))
        for k, p in enumerate(self.params):
            hp = self.hp[k]
            lr = [lrs[m] * hp["lr_mult"][m] for m in range(M)]
            wd = hp["weight_decay"]
            b1, b2 = hp["beta1"], hp["beta2"]
            c = {"one_minus_b1": self.col([1 - b for b in b1], p), "b2": self.col(b2, p),
                 "one_minus_b2": self.col([1 - b for b in b2], p),
                 "step_size": self.col([lr[m] / (1 - b1[m] ** t) for m in range(M)], p),
                 "bias2_sqrt": self.col([(1 - b ** t) ** 0.5 for b in b2], p), "eps": self.col(hp["eps"], p)}
            if any(wd):
                if self.optimizer == "adamw":
                    c["decay"] = self.col([1 - lr[m] * wd[m] for m in range(M)], p)
                else:
                    c["wd"] = self.col(wd, p)
            if avg[k] is None:
                avg[k] = torch.zeros_like(p)
                avg_sq[k] = torch.zeros_like(p)
            out.append(c)
        return out

    @torch.no_grad()
    def apply_update(self, scalars: list[dict[str, Any]], grads: Sequence[torch.Tensor], s: int, e: int) -> None:
        """The step begun by :meth:`step_scalars` for members ``s:e`` (in place), from their
        gradients ``grads`` (each ``[e - s, ...]``)."""
        if self.optimizer == "sgd":
            bufs = self.state["momentum_buffer"]
            for k, (p, g) in enumerate(zip(self.params, grads)):
                c, p, buf = scalars[k], self.params[k][s:e], bufs[k][s:e]
                if "wd" in c:
                    g = g + c["wd"][s:e] * p
                if c["first"]:
                    buf.copy_(g)
                else:
                    # a member without momentum uses g itself (0 * buf + g == g exactly)
                    buf.mul_(c["momentum"][s:e]).add_(g)
                p.sub_(c["lr"][s:e] * buf)
            return
        for k, g in enumerate(grads):
            c, p = scalars[k], self.params[k][s:e]
            avg, avg_sq = self.state["exp_avg"][k][s:e], self.state["exp_avg_sq"][k][s:e]
            if "decay" in c:
                p.mul_(c["decay"][s:e])
            elif "wd" in c:
                g = g + c["wd"][s:e] * p
            avg.lerp_(g, c["one_minus_b1"][s:e])
            avg_sq.mul_(c["b2"][s:e]).addcmul_(g, g * c["one_minus_b2"][s:e])
            denom = (avg_sq.sqrt() / c["bias2_sqrt"][s:e]).add_(c["eps"][s:e])
            p.sub_(c["step_size"][s:e] * (avg / denom))

    # ---- curvature
    def preconditioner(self, rows: list[int], grads: Sequence[torch.Tensor], lrs: Sequence[float]):
        """``(d, l2)``: flat ``P^-1/2`` (times each parameter's ``lr_mult / lr_mult_0``) and the
        coupled-L2 rows ``P^-1 wd`` (Adam, not AdamW) of members ``rows``, the operator of
        :func:`catapult.curvature.preconditioned_sharpness` with ``scale_by_group_lr=True``::

            v' = b2 v + (1 - b2) g^2   (v = 0 before the first step),
            P  = (1 - b1^(t+1)) (sqrt(v' / (1 - b2^(t+1))) + eps).
        """
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        t = self.step_count
        d_parts, l2_parts = [], []
        coupled = self.optimizer == "adam"
        has_l2 = False
        for k, (p, g) in enumerate(zip(self.params, grads)):
            hp = {key: [v[r] for r in rows] for key, v in self.hp[k].items()}
            p, g = p[idx], g[idx]
            wd = hp["weight_decay"]
            if coupled and any(wd):
                g = g + self.col(wd, p) * p
                has_l2 = True
            b2 = self.col(hp["beta2"], p)
            one_minus_b2 = self.col([1.0 - b for b in hp["beta2"]], p)
            if t > 0:
                v_next = b2 * self.state["exp_avg_sq"][k][idx] + one_minus_b2 * g * g
            else:
                v_next = one_minus_b2 * g * g
            v_corr = self.col([1.0 - b ** (t + 1) for b in hp["beta2"]], p)
            m_corr = self.col([1.0 - b ** (t + 1) for b in hp["beta1"]], p)
            P = m_corr * (torch.sqrt(v_next / v_corr) + self.col(hp["eps"], p))
            inv = 1.0 / P
            ratio = [(lrs[r] * self.hp[k]["lr_mult"][r]) / (lrs[r] * self.members[r].lr_mult0) for r in rows]
            if any(x != 1.0 for x in ratio):
                inv = inv * self.col(ratio, p)
            d_parts.append(torch.sqrt(inv).reshape(len(rows), -1))
            l2_parts.append((inv * self.col(wd, p)).reshape(len(rows), -1))
        return torch.cat(d_parts, dim=1), (torch.cat(l2_parts, dim=1) if has_l2 else None)

    def sharpness(self, rows: list[int], x, y, inits: torch.Tensor, precond=None) -> list[EigenEstimate]:
        """Batched (pre-conditioned) sharpness of members ``rows`` on the batch ``(x, y)``."""
        tol = [self.members[r].tol for r in rows]
        max_iter = [self.members[r].max_iter for r in rows]

        def operator(sel: torch.Tensor, V: torch.Tensor, hvp) -> torch.Tensor:
            """The solver's operator from Hessian products ``hvp``: ``H v``, or with ``precond =
            (d, l2)`` the pre-conditioned ``d * H(d * v) + l2 * v`` of members ``sel``."""
            if precond is None:
                return hvp(V)
            out = hvp(precond[0][sel] * V) * precond[0][sel]
            if precond[1] is not None:
                out = out + precond[1][sel] * V
            return out

        if self.hand:
            # products for the members still iterating only (``active`` indexes ``rows``, the
            # positions of the state)
            state = self.hvp_state(rows, x, y)

            def hand_matvec(active: np.ndarray, V: torch.Tensor) -> torch.Tensor:
                active = [int(a) for a in active]
                sel = torch.as_tensor(active, dtype=torch.long, device=V.device)
                return operator(sel, V, lambda U: self.hvp(state, U, active))

            return batched_lanczos(hand_matvec, inits, tol=tol, max_iter=max_iter, max_basis=self.max_basis)

        graph: dict[str, Any] = {}

        def build(local: np.ndarray) -> None:
            sel = torch.as_tensor([rows[i] for i in local], dtype=torch.long, device=self.params[0].device)
            leaves = [p.detach()[sel].requires_grad_(True) for p in self.params]
            masks = [m[sel] if m is not None else None for m in self.masks]
            with torch.enable_grad():
                out = self.forward(leaves, masks, x)
                total = self.losses(out, y).sum()
                grads = torch.autograd.grad(total, leaves, create_graph=True)
            graph.update(local=list(local), leaves=leaves, grads=grads)

        build(np.arange(len(rows)))

        def matvec(active: np.ndarray, V: torch.Tensor) -> torch.Tensor:
            active = list(int(a) for a in active)
            if active != graph["local"] and len(active) <= len(graph["local"]) // 2:
                build(np.asarray(active))
            pos = {a: i for i, a in enumerate(graph["local"])}
            where = torch.as_tensor([pos[a] for a in active], dtype=torch.long, device=V.device)
            sel = torch.as_tensor(active, dtype=torch.long, device=V.device)

            def hvp(U: torch.Tensor) -> torch.Tensor:  # rows of the graph's members not asked: 0
                full = U.new_zeros((len(graph["local"]), U.shape[1]))
                full[where] = U
                with torch.enable_grad():
                    hv = torch.autograd.grad(graph["grads"], graph["leaves"], grad_outputs=self.split(full),
                                             retain_graph=True, allow_unused=True, materialize_grads=True)
                return self.flat(hv)[where]

            return operator(sel, V, hvp)

        return batched_lanczos(matvec, inits, tol=tol, max_iter=max_iter, max_basis=self.max_basis)

    @torch.no_grad()
    def evaluate(self, rows: list[int], x: torch.Tensor, y: torch.Tensor, chunk: int = 8192):
        """``[(loss, accuracy)]`` on ``(x, y)`` per member of ``rows`` (as ``train.evaluate``)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        params = [p[idx] for p in self.params]
        masks = [m[idx] if m is not None else None for m in self.masks]
        n = x.shape[0]
        loss_tot = [0.0] * len(rows)
        acc_tot = [0.0] * len(rows)
        for start in range(0, n, chunk):
            xb, yb = x[start:start + chunk], y[start:start + chunk]
            out = self.forward(params, masks, xb)
            losses = self.losses(out, yb).tolist()
            accs = self.accuracies(out, yb)
            for i in range(len(rows)):
                loss_tot[i] += losses[i] * xb.shape[0]
                acc_tot[i] += accs[i] * xb.shape[0]
        return [(loss_tot[i] / n, acc_tot[i] / n) for i in range(len(rows))]


def _sharpness_at(mb: _Member, t: int) -> bool:
    """Whether member ``mb`` measures its sharpness at step ``t`` (as ``run``)."""
    return mb.sharpness_every > 0 and (t % mb.sharpness_every == 0 or t == mb.steps)


def _test_at(mb: _Member, t: int) -> bool:
    """Whether member ``mb`` evaluates on the test set at step ``t`` (as ``run``)."""
    return t == mb.steps or (mb.test_every > 0 and t % mb.test_every == 0)


def run_ensemble(cells: Sequence[Cell], *, threads: int | None = None,
                 data: Any = None) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` (one group: see :func:`group_key`) as one batched model; yields
    ``(cell_id, CellResult)`` as each member finishes or diverges (see the module docstring).
    ``data``: the group's :func:`catapult.train.load_data` result on the CPU in float32, if
    the caller has it (used when the run's device and dtype are those; else loaded again)."""
    from catapult import train
    from catapult.train import METRIC_COLUMNS, _threshold

    started = time.perf_counter()
    configs = [cfg.validate(c.config) for c in cells]
    c0 = configs[0]
    device = train.resolve_device(c0["device"])
    dtype = getattr(torch, c0["dtype"])
    if data is None or data.x_train.device != torch.device(device) or (
            data.x_train.is_floating_point() and data.x_train.dtype != dtype):
        data = train.load_data(c0, device, dtype)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    in_features = data.in_features
    data_seed = train.seeds(c0["seed"])[1]
    batches = train.BatchStream(x_train, y_train, c0["train"]["batch_size"], data_seed)
    opt_name = c0["optimizer"]["name"]
    kind = c0["eval"]["sharpness_kind"]
    if kind == "auto":
        kind = "preconditioned" if opt_name in train.ADAPTIVE else "hessian"
    worker = _worker_name()

    members: list[_Member] = []
    models = []
    for cell, config in zip(cells, configs):
        _, _, sharp_seed = train.seeds(config["seed"])
        ev = config["eval"]
        members.append(_Member(
            cell=cell, config=config, steps=config["train"]["steps"], sharpness_every=ev["sharpness_every"],
            test_every=ev["test_every"], divergence_factor=config["train"]["divergence_factor"],
            tol=ev["sharpness_tol"], max_iter=ev["sharpness_max_iter"],
            lr_spec=cfg.parse_lr(config["optimizer"]["lr"]), sharpness_seed=sharp_seed))
        model = train.build_model(config, in_features, data.num_classes, device, dtype)
        model.train()
        models.append(model)
    batch = _Batch(members, models, kind, c0["loss"], opt_name, max_basis=c0["eval"]["sharpness_max_basis"])
    n_params = batch.n_params

    def result_of(mb: _Member, t_end: float) -> CellResult:
        opt = mb.threshold_opt
        summary = train._summarize(
            mb.config, mb.metrics, status=mb.status, diverged_at=mb.diverged_at, lambda_0=mb.lambda_0,
            lr_trgt=mb.lr_trgt, threshold_target=_threshold(opt, mb.lr_trgt * mb.lr_mult0),
            n_params=n_params, device=device, sharpness_kind=kind, matvecs_total=mb.matvecs_total,
            measurements=mb.measurements, unconverged=mb.unconverged,
            wall_time=(t_end - started) / len(cells))
        return CellResult(mb.status, mb.metrics, summary, worker=worker)

    # ---- lambda_0 (Hessian sharpness at theta_0 on batch 0, from randn(P, sharpness_seed))
    x0, y0 = batches.batch(0)
    need = [i for i, mb in enumerate(members) if mb.sharpness_every > 0 or mb.lr_spec.relative]
    starts = {}
    for i, mb in enumerate(members):
        if mb.sharpness_every > 0 or mb.lr_spec.relative:
            v = torch.randn(n_params, generator=torch.Generator().manual_seed(mb.sharpness_seed))
            starts[i] = v.to(device=device, dtype=dtype)
            mb.warm = starts[i]
    if need:
        ests = batch.sharpness(need, x0, y0, torch.stack([starts[i] for i in need]))
        for i, est in zip(need, ests):
            mb = members[i]
            mb.lambda0_estimate, mb.lambda_0 = est, float(est.value)
            mb.matvecs_total += int(est.matvecs)
            mb.unconverged += int(not est.converged)

    # ---- per-member optimizer groups (lr_mult, hyper-parameters), schedules
    failed: list[int] = []
    for i, (mb, model) in enumerate(zip(members, models)):
        try:
            mb.lr_trgt = mb.lr_spec.resolve(mb.lambda_0)
        except ValueError as err:
            mb.status = "failed"
            mb.metrics = [{"error": f"optimizer.lr={mb.config['optimizer']['lr']!r}: {err}"}]
            failed.append(i)
            mb.lr_trgt = 1.0
        optimizer = train.build_optimizer(mb.config, model, mb.lr_trgt)
        by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        mb.hyper = []
        for p in model.parameters():
            g = by_id[id(p)]
            entry = {"lr_mult": float(g.get("lr_mult", 1.0)), "weight_decay": float(g.get("weight_decay", 0.0))}
            if opt_name == "sgd":
                if g.get("nesterov") or g.get("dampening", 0.0) or g.get("maximize"):
                    raise ValueError("the ensemble reproduces SGD without nesterov/dampening/maximize only")
                entry["momentum"] = float(g.get("momentum", 0.0))
            else:
                if g.get("amsgrad") or g.get("maximize"):
                    raise ValueError("the ensemble reproduces Adam without amsgrad/maximize only")
                entry.update(beta1=float(g["betas"][0]), beta2=float(g["betas"][1]), eps=float(g["eps"]))
            mb.hyper.append(entry)
        mb.lr_mult0 = float(optimizer.param_groups[0].get("lr_mult", 1.0))
        mb.threshold_opt = _threshold_optimizer(optimizer)
        if mb.status != "failed":
            mb.schedule = train.build_schedule(mb.config, mb.lr_trgt)
    batch.set_hyper()
    del models
    for i in failed:
        err = members[i].metrics[0]["error"]
        yield members[i].cell.id, CellResult("failed", [], {}, error=f"ValueError: {err}", worker=worker)
    if failed:
        batch.keep([r for r in range(len(members)) if r not in set(failed)])

    # ---- the loop
    t = 0
    while batch.members:
        mbs = batch.members
        x, y = batches.batch(t)
        lrs = [float(mb.schedule(t)) for mb in mbs]
        rows = []
        for mb, lr_t in zip(mbs, lrs):
            row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
            opt = mb.threshold_opt
            opt.param_groups[0]["lr"] = lr_t * float(mb.lr_mult0)
            row.update(step=t, lr=lr_t, threshold=_threshold(opt))
            rows.append(row)
        # fused step: when no member measures anything at t (sharpness, test, final step), each
        # sub-batch's update is applied right after its gradient, which stays in cache (a member
        # that diverges at t is updated too, and dropped below, as with the unfused update)
        fused = batch.hand and all(t < mb.steps and not _sharpness_at(mb, t) and not _test_at(mb, t) for mb in mbs)
        if fused:
            losses, accs, _ = batch.loss_grads(x, y, True, step=batch.step_scalars(lrs))
            grads = None
        elif batch.hand:  # loss and gradient in one hand-derived pass, before the divergence test
            losses, accs, grads = batch.loss_grads(x, y, any(t < mb.steps for mb in mbs))
        else:
            params = [p.detach().requires_grad_(True) for p in batch.params]
            with torch.enable_grad():
                out = batch.forward(params, batch.masks, x)
                losses = batch.losses(out, y)
            accs = batch.accuracies(out.detach(), y)
        loss_list = losses.detach().tolist()
        alive, gone = [], []
        for r, (mb, row) in enumerate(zip(mbs, rows)):
            loss_t = float(loss_list[r])
            row["train_loss"], row["train_accuracy"] = loss_t, accs[r]
            if t == 0:
                mb.loss_0 = loss_t
            if not math.isfinite(loss_t) or (mb.loss_0 > 0 and loss_t > mb.divergence_factor * mb.loss_0):
                mb.status, mb.diverged_at = "diverged", t
                mb.metrics.append(row)
                gone.append(r)
            else:
                alive.append(r)
        if not batch.hand:
            grads = None
            if any(t < mbs[r].steps for r in alive):
                sel = torch.as_tensor(alive, dtype=torch.long, device=losses.device)
                grads = torch.autograd.grad(losses[sel].sum(), params)
            del out, params
        del losses
        # sharpness
        sharp_rows = [r for r in alive if _sharpness_at(mbs[r], t)]
        measured = {}
        reuse = [r for r in sharp_rows if t == 0 and kind == "hessian" and mbs[r].lambda0_estimate is not None]
        for r in reuse:
            measured[r] = mbs[r].lambda0_estimate
        todo = [r for r in sharp_rows if r not in measured]
        if todo:
            inits = torch.stack([mbs[r].warm for r in todo])
            precond = None
            if kind == "preconditioned":
                if grads is None and batch.hand:  # only final steps: gradient for the preconditioner
                    grads = batch.loss_grads(x, y, True)[2]
                elif grads is None:
                    params = [p.detach().requires_grad_(True) for p in batch.params]
                    with torch.enable_grad():
                        total = batch.losses(batch.forward(params, batch.masks, x), y)
                        sel = torch.as_tensor(alive, dtype=torch.long, device=total.device)
                        grads = torch.autograd.grad(total[sel].sum(), params)
                    del params, total
                precond = batch.preconditioner(todo, grads, lrs)
            for r, est in zip(todo, batch.sharpness(todo, x, y, inits, precond)):
                measured[r] = est
                mbs[r].matvecs_total += int(est.matvecs)
                mbs[r].unconverged += int(not est.converged)
        for r, est in measured.items():
            mbs[r].warm = est.vector
            rows[r]["sharpness"] = float(est.value)
            rows[r]["sharpness_matvecs"] = int(est.matvecs)
            mbs[r].measurements += 1
        # test
        test_rows = [r for r in alive if _test_at(mbs[r], t)]
        if test_rows:
            for r, (tl, ta) in zip(test_rows, batch.evaluate(test_rows, x_test, y_test)):
                rows[r]["test_loss"], rows[r]["test_accuracy"] = tl, ta
        finished = []
        for r in alive:
            mbs[r].metrics.append(rows[r])
            if t == mbs[r].steps:
                finished.append(r)
        now = time.perf_counter()
        for r in gone + finished:
            yield mbs[r].cell.id, result_of(mbs[r], now)
        stay = [r for r in alive if r not in set(finished)]
        if stay and not fused:
            batch.update(grads, lrs)
        batch.keep(stay)
        t += 1


# --------------------------------------------------------------------------------------------
# The executor


def _run_batched_chunk(chunk: Sequence[Cell], run_fn: RunFn, threads: int | None,
               data: Any = None) -> Iterator[tuple[int, CellResult, str | None]]:
    """One chunk through :func:`run_ensemble`; yields ``(cell_id, result, fallback)`` where
    ``fallback`` is the reason a cell ran locally (through ``run_fn``) or ``None``. If the
    batched engine raises, the chunk's remaining cells run locally."""
    done: set[int] = set()
    try:
        with torch_threads(threads):
            for cell_id, result in run_ensemble(chunk, threads=threads, data=data):
                done.add(cell_id)
                yield cell_id, result, None
    except Exception as err:  # the batched engine failed: run the rest locally
        reason = f"ensemble engine raised {type(err).__name__}: {err}"
        for cell in chunk:
            if cell.id not in done:
                yield cell.id, run_cell(run_fn, cell, threads), reason


#: a worker process's data per data section (:meth:`EnsembleExecutor._data_key`)
_WORKER_DATA: dict[str, Any] = {}


def _chunk_job(arg: tuple) -> Iterator[tuple[int, CellResult, str | None]]:
    """Job of a worker process (:mod:`catapult.sweep.workers`): a batched chunk, or one cell
    to run locally (``reason`` given), with the worker's cached data."""
    from catapult import train

    chunk, run_fn, threads, reason = arg
    if reason is not None:
        for cell in chunk:
            yield cell.id, run_cell(run_fn, cell, threads), reason
        return
    config = cfg.validate(chunk[0].config)
    key = EnsembleExecutor._data_key(config)
    if key not in _WORKER_DATA:
        try:
            _WORKER_DATA[key] = train.load_data(config)
        except Exception:
            _WORKER_DATA[key] = None  # run_ensemble loads it again and reports the error
    yield from _run_batched_chunk(chunk, run_fn, threads, _WORKER_DATA[key])


class EnsembleExecutor(Executor):
    """Batched cells (see the module docstring); others through ``run_fn`` one by one.

    Options: ``memory_mb`` (budget of one chunk, default :data:`DEFAULT_MEMORY_MB`),
    ``max_members`` (cap on members per chunk, default none), ``threads`` (torch threads while
    running; per worker with ``workers``), ``workers`` (processes that train chunks side by
    side, default 1 = all in this process). :attr:`fallbacks` lists ``(cell_id, reason)`` for
    every cell run locally.

    With ``workers = k > 1`` each group of cells is cut into at least ``k`` chunks (members
    dealt out in turn, so each chunk gets a share of the cells that diverge early), chunks and
    local cells run in a :class:`catapult.sweep.workers.StreamPool` of ``k`` spawned processes
    with ``threads`` (default: torch's threads here divided by ``k``) torch threads each, and
    results stream back as members finish. Up to ``k`` chunks are in memory at once (``k *
    memory_mb``). A worker that dies mid-chunk has the chunk's unfinished cells run once more in
    a new process, then recorded as failed. The pool starts on first use (imports and data in
    every process: ~5 s on 2 busy cores) and lives until :meth:`close`, so it pays off on sweeps
    of more than ~30 s; ``run_fn`` must be picklable, and
    a script that builds this executor needs an ``if __name__ == "__main__":`` guard (the
    processes are spawned and import the main module).
    """

    name = "ensemble"

    def __init__(self, run_fn: RunFn | None = None, *, memory_mb: float | None = None,
                 max_members: int | None = None, threads: int | None = None, workers: int | None = None):
        super().__init__(run_fn)
        memory_mb = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb
        if not memory_mb > 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb!r}")
        if max_members is not None and max_members < 1:
            raise ValueError(f"max_members must be >= 1, got {max_members!r}")
        workers = 1 if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if workers > 1:
            import pickle

            try:
                pickle.dumps(self.run_fn)
            except Exception as err:
                raise ValueError(f"workers={workers} runs cells in worker processes, so run_fn must be "
                                 f"picklable (a module-level function); {self.run_fn!r} is not: {err}") from None
        self.memory_mb = float(memory_mb)
        self.max_members = max_members
        self.threads = threads
        self.workers = workers
        self.fallbacks: list[tuple[int, str]] = []
        self.chunks: list[list[int]] = []
        self._data: dict[str, Any] = {}  # data section (JSON) -> train.load_data(config), from plan
        self._pool = None

    def plan(self, cells: Sequence[Cell]) -> tuple[list[list[Cell]], list[tuple[Cell, str]]]:
        """``(chunks, local)``: batched chunks (each within the memory budget, and at least
        ``workers`` per group) and the cells to run locally with the reason."""
        groups: dict[str, list[Cell]] = {}
        local: list[tuple[Cell, str]] = []
        for cell in cells:
            try:
                config = cfg.validate(cell.config)
                reason = unsupported_reason(config)
            except Exception as err:  # the local path reports it as the cell's failure
                reason = f"{type(err).__name__}: {err}"
            if reason is not None:
                local.append((cell, reason))
            else:
                groups.setdefault(group_key(config), []).append(cell)
        chunks: list[list[Cell]] = []
        for members in groups.values():
            size = self._chunk_size(cfg.validate(members[0].config), members)
            if self.workers == 1:
                chunks.extend(members[i:i + size] for i in range(0, len(members), size))
                continue
            count = max(-(-len(members) // size), min(self.workers, len(members)))
            chunks.extend(members[i::count] for i in range(count))
        return chunks, local

    @staticmethod
    def _data_key(config: Mapping[str, Any]) -> str:
        """The key of :attr:`_data`: the validated config's data section."""
        return canonical_json(config["data"])

    def _chunk_size(self, config: Mapping[str, Any], members: Sequence[Cell]) -> int:
        from catapult import train

        try:
            data = train.load_data(config)
        except Exception:
            return 1  # the run reports the error
        # kept for run_ensemble (one copy per data section): digits take ~0.1 s to load
        self._data[self._data_key(config)] = data
        n_train = data.x_train.shape[0]
        batch = config["train"]["batch_size"] or n_train
        per = member_bytes(config, data.in_features, data.num_classes, batch, data.x_test.shape[0])
        size = max(1, int(self.memory_mb * 2**20 // per))
        if self.max_members is not None:
            size = min(size, self.max_members)
        return min(size, len(members))

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
        cells = list(cells)
        chunks, local = self.plan(cells)
        if self.workers > 1:
            yield from self._run_in_workers(chunks, local)
            return
        for cell, reason in local:
            self.fallbacks.append((cell.id, reason))
            yield cell.id, run_cell(self.run_fn, cell, self.threads)
        for chunk in chunks:
            self.chunks.append([c.id for c in chunk])
            data = self._data.get(self._data_key(cfg.validate(chunk[0].config)))
            for cell_id, result, reason in _run_batched_chunk(chunk, self.run_fn, self.threads, data):
                if reason is not None:
                    self.fallbacks.append((cell_id, reason))
                yield cell_id, result
        self._data.clear()

    def _run_in_workers(self, chunks: list[list[Cell]],
                        local: list[tuple[Cell, str]]) -> Iterator[tuple[int, CellResult]]:
        from catapult.sweep.workers import StreamPool

        self._data.clear()  # the workers load their own
        if self._pool is None:
            threads = self.threads or max(1, torch.get_num_threads() // self.workers)
            self._pool = StreamPool(self.workers, threads)
        jobs: dict[int, tuple[list[Cell], str | None, int]] = {}  # key -> (cells, local reason, tries)

        def submit(chunk: list[Cell], reason: str | None, tries: int) -> None:
            key = len(jobs)
            jobs[key] = (chunk, reason, tries)
            self._pool.submit(key, _chunk_job, (chunk, self.run_fn, self._pool.threads, reason))

        for chunk in chunks:  # the big jobs first, local cells fill the gaps
            self.chunks.append([c.id for c in chunk])
            submit(chunk, None, 1)
        for cell, reason in local:
            submit([cell], reason, 1)
        delivered: set[int] = set()
        for kind, key, value in self._pool.events():
            if kind == "item":
                cell_id, result, reason = value
                delivered.add(cell_id)
                if reason is not None:
                    self.fallbacks.append((cell_id, reason))
                yield cell_id, result
            elif kind in ("error", "lost"):
                chunk, reason, tries = jobs[key]
                rest = [c for c in chunk if c.id not in delivered]
                if kind == "lost" and tries < 2 and rest:
                    submit(rest, reason, tries + 1)
                    continue
                for cell in rest:
                    delivered.add(cell.id)
                    yield cell.id, CellResult("failed", [], {}, error=f"ensemble worker: {value}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
