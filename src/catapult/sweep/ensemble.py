"""The ``ensemble`` executor: many sweep cells trained as one batched model.

Two batched engines, one executor. Each group of cells (:func:`catapult.sweep.grouping.group_key`)
goes to the hand-derived MLP kernels below when they reproduce it (:func:`unsupported_reason`
is None: the fast path), and otherwise to the general torch.func engine
(:mod:`catapult.sweep.batched`: any model -- MLP, GPT --, every optimizer, every warmup, both
sharpness kinds). ``kernels=False`` (``catapult sweep --no-kernels``) sends every group to the
torch.func engine. :attr:`EnsembleExecutor.engines` records which engine trained each cell.

The fast path. Cells that share architecture, data and batch order but differ in per-member scalars
(learning rate, warmup/schedule, init seed, momentum, Adam betas/eps, weight decay, run length,
divergence factor, eval cadence) train *together*: the ``N`` members' MLP weights are stacked
into tensors ``W_l`` of shape ``[N, out, in]`` and the forward pass is one matmul per layer
(``x W_all^T`` over the shared input for layer 0, ``torch.bmm`` after), so a sweep of small
models runs at matmul speed instead of paying Python/autograd overhead per cell. For ReLU and
identity MLPs the gradient and the Hessian-vector product are derived by hand on the stacked
weights (no autograd graph) and run in sub-batches of members sized to the core's L2 cache
(:meth:`MLPStack.group_size`) and cut in multiples of the thread count; on steps where no member
measures anything, each sub-batch's optimizer update follows its gradient at once, so no
full-size gradient is ever formed. Other activations go through autograd.

Both engines train in the one loop of :mod:`catapult.sweep.batched_loop`, over its stack
interface (:class:`~catapult.sweep.ensemble_run.KernelStack`,
:class:`~catapult.sweep.batched.FuncStack`).

Exactness contract: each member reproduces :func:`catapult.engine.run` for its cell (the step
semantics in that module's docstring) to float tolerance (batched reductions round
differently; nothing else differs). Per step that is float rounding; over a run, a cell at the
edge of stability (a catapult) amplifies it like any other perturbation: on
``configs/smoke/phase_diagram.yaml`` in float32 the final training losses of the two executors
differ by up to 16% in the largest-lr cells and by < 1e-6 in most, with the same statuses, while
in float64 (``dtype=float64``) they agree to 3e-11 in every cell. One more amplifier: Adam's
pre-conditioned sharpness with a coupled L2 (``adam``/``radam``, ``weight_decay > 0``) holds
``wd / P`` where ``P`` is ``eps`` plus the rounding noise of a gradient that is zero analytically
(a GPT's attention key bias: 3e-22 computed), which the two engines round differently; a
one-layer GPT in float64 at eps 1e-8 read 594 locally and 1893 batched at step 4 (both converged
at tol 1e-12), and agrees to 3e-9 at eps 1e-5 or without biases
(``bench/ensemble_zero_gradient_noise.py``):

* init: every member's model is built by :func:`catapult.engine.build_model` (its own
  ``seeds(seed)[0]``, float32 on the CPU, then ``device``/``dtype``), masks included, and
  stacked; batches come from one shared :class:`catapult.engine.BatchStream` (members of a
  group have the same ``data_seed``, or train full batch, where the seed does not matter);
* lambda_0 / sharpness: a batched Lanczos (:func:`batched_lanczos`) that runs the
  iteration of :func:`catapult.curvature.lanczos_top_eigenpair` for every member in lockstep
  (same start vector ``randn(P, sharpness_seed)``, same full re-orthogonalisation, thick
  restarts of an ``eval.sharpness_max_basis`` basis, per-member stopping test
  ``|beta s_m| / |theta| <= tol`` and ``max_iter``), on batched Hessian-vector products of
  ``sum_n L_n``, whose Hessian is block-diagonal over members (the hand-derived R-operator for
  ReLU/identity MLPs, double backprop otherwise; members that have stopped leave the product);
  Adam-family members get the pre-conditioned operator ``P^-1/2 H P^-1/2`` of :func:`catapult.curvature.preconditioned_sharpness`
  (``scale_by_group_lr=True``, coupled L2 for Adam), SGD members with per-group lrs the
  lr-scaled ``M^1/2 H M^1/2`` (:mod:`catapult.engine.sharpness_rule`). Warm starts, the reuse of the lambda_0
  estimate at ``t = 0`` and the matvec counts follow ``run``;
* optimizers: the pure rules of :mod:`catapult.optim.rules` (SGD with momentum and weight
  decay, Adam, AdamW) on the stacked tensors through
  :class:`~catapult.sweep.batched_optim.StackedOptimizer`, each parameter at ``lr_t * lr_mult``
  of its :func:`catapult.param_groups` group, member span by member span (in cache); schedules
  are each cell's own :func:`catapult.engine.build_schedule`;
* divergence (``train_loss_t`` not finite or ``> divergence_factor * train_loss_0``): the
  member's row ``t`` is logged, its result is yielded at once and it is dropped from the
  stacked tensors (frozen); the other members' arithmetic never mixes with it (per-member
  matmuls, per-member loss terms), so their results do not change;
* rows, thresholds (the member's own optimizer's :func:`catapult.engine.threshold`) and the
  summary (:func:`catapult.engine.summarize`) are built exactly as ``run`` builds them.
  ``summary["wall_time_s"]`` is the chunk's wall time divided by its number of members.

Grouping: cells are grouped by their config with the per-member keys (:data:`PER_MEMBER_KEYS`)
removed, plus the data seed for minibatch runs. A group is split into chunks whose estimated
memory fits the budget; chunking changes nothing in the results, at one thread count (a lone
member of a conv model computes beside a copy of itself where a chunk may hold two:
:class:`~catapult.sweep.batched_model.StackedModel`'s ``pad_lone``). Hand-kernel chunks:
:func:`member_bytes` (parameters, optimizer state, Lanczos basis, activations of the batch and
the test set) against ``memory_mb``. torch.func chunks: one member's parameters, buffers and the
activations autograd saves on one batch, measured for any architecture
(:func:`catapult.sweep.batched_memory.chunk_members`), against the device's budget
(:func:`catapult.sweep.batched_memory.memory_budget`: free CUDA memory, or
``func_memory_fraction`` of the RAM).

Worker processes (``workers=k``, ``catapult sweep --workers k``): chunks train side by side in
``k`` spawned processes (:mod:`catapult.sweep.workers`), each group cut into at least ``k``
chunks; results stream back to the driver, which alone writes the store.

What the fast path leaves to the torch.func engine: any model other than ``mlp`` (e.g. GPT), an
optimizer other than sgd/adam/adamw (GI-Adam, RAdam), a warmup rule other than ``linear``
(catapult, persistent), ``eval.sharpness_dtype`` different from ``dtype``, or a config key the
kernels do not know set away from its default.

Fallback to the local path (one :func:`catapult.engine.run` per cell, through ``run_fn``): what
no batched engine runs -- a config that does not validate (its failure is the local run's), a
``model.name`` without a builder (:func:`catapult.sweep.batched.batched_unsupported_reason`) --
and the remaining cells of a chunk whose batched engine raised. Cells of different
architectures never share a group: each architecture is its own group. Every fallback is
listed in :attr:`EnsembleExecutor.fallbacks` as ``(cell_id, reason)``.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from catapult import config as cfg
from catapult.arguments import check_flag, check_integer, check_real, max_workers
from catapult.curvature import batched_lanczos  # noqa: F401  (re-exported)
from catapult.sweep.executors import Cell, CellResult, Executor, RunFn, check_threads, run_cell, torch_threads
from catapult.sweep.spec import canonical_json
from catapult.sweep.ensemble_kernels import LOSSES
from catapult.sweep.ensemble_run import run_ensemble
from catapult.sweep.grouping import PER_MEMBER_KEYS, group_key
from catapult.sweep.batched_memory import DEFAULT_FRACTION, chunk_members, memory_budget

__all__ = [
    "EnsembleExecutor",
    "PER_MEMBER_KEYS",
    "DEFAULT_MEMORY_MB",
    "unsupported_reason",
    "group_key",
    "member_bytes",
    "batched_lanczos",
    "run_ensemble",
    "run_batched",
    "ENGINES",
]

#: Default memory budget of one chunk (MiB), ``--ensemble-memory-mb``.
DEFAULT_MEMORY_MB = 2048

#: Dotted keys (or whole sections) that may differ between members of one batched group.
# (declared on the config's fields: json_schema_extra={"per_member": True})

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
    "train.steps", "train.batch_size", "train.divergence_factor", "train.accuracy_failure",
    "eval.lambda0_batches",
    "eval.sharpness_every", "eval.sharpness_tol", "eval.sharpness_max_iter", "eval.sharpness_kind",
    "eval.sharpness_hvp", "eval.sharpness_dtype", "eval.test_every", "eval.sharpness_max_basis",
    "eval.sharpness_start",
    # a memory setting of the local engine (micro-batched HVPs, the same products to rounding);
    # the ensemble bounds its own memory by sub-batches and chunks, so it is accepted, not used
    "eval.sharpness_chunk_size",
})
_OPTIMIZERS = ("sgd", "adam", "adamw")


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
    """Why the hand-kernel engine cannot run ``config`` (a validated run config), or ``None``:
    whatever the torch.func engine cannot reproduce (its
    :func:`~catapult.sweep.batched.batched_unsupported_reason`), then the kernels' own limits."""
    from catapult.sweep.batched import batched_unsupported_reason

    reason = batched_unsupported_reason(config)
    if reason is not None:
        return reason
    if config["model"]["name"] != "mlp":
        return f"model.name={config['model']['name']!r} (the ensemble batches the mlp only)"
    if config["optimizer"]["name"] not in _OPTIMIZERS:
        return f"optimizer.name={config['optimizer']['name']!r} (batched: {', '.join(_OPTIMIZERS)})"
    if config["schedule"]["warmup"] != "linear":
        return f"schedule.warmup={config['schedule']['warmup']!r} (batched: linear)"
    if config["loss"] not in LOSSES:
        return f"loss={config['loss']!r} (batched: {', '.join(LOSSES)})"
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
    ``n_test x sum(widths)`` x 2 for the test evaluation. The float64 check of a float32
    pre-conditioned mark is not counted: it stays within the solve's peak for chunks of two or
    more members (:mod:`catapult.sweep.batched_memory`).
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
# The executor


#: The batched engines a chunk can run on: the hand-derived MLP kernels (the fast path) and
#: the general torch.func engine.
ENGINES = ("kernels", "func")


def _run_batched_chunk(chunk: Sequence[Cell], run_fn: RunFn, threads: int | None,
                       data: Any = None, engine: str = "kernels",
                       pad_lone: bool = True) -> Iterator[tuple[int, CellResult, str | None]]:
    """One chunk through :func:`run_ensemble` (``engine="kernels"``) or
    :func:`catapult.sweep.batched.run_group` (``"func"``, with ``pad_lone``); yields
    ``(cell_id, result, fallback)`` where ``fallback`` is the reason a cell ran locally (through
    ``run_fn``) or ``None``. If the batched engine raises, the chunk's remaining cells run locally."""
    from catapult.sweep.batched import run_group

    done: set[int] = set()
    try:
        with torch_threads(threads):
            members = (run_ensemble(chunk, data=data) if engine == "kernels"
                       else run_group(chunk, data=data, pad_lone=pad_lone))
            for cell_id, result in members:
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
    from catapult import engine as train

    chunk, run_fn, threads, reason, engine, pad_lone = arg
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
    yield from _run_batched_chunk(chunk, run_fn, threads, _WORKER_DATA[key], engine, pad_lone)


def run_batched(cells: Sequence[Cell], *, threads: int | None = None, run_fn: RunFn | None = None,
                max_members: int | None = None) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` with the torch.func engine (:mod:`catapult.sweep.batched`) only: an
    :class:`EnsembleExecutor` with ``kernels=False``. Groups of batchable cells train together
    in chunks of at most ``max_members``; the others, and the cells of a chunk whose batched run
    raises, run one by one through ``run_fn`` (default :func:`catapult.engine.run`). Yields
    ``(cell_id, CellResult)`` as each finishes."""
    executor = EnsembleExecutor(run_fn, threads=threads, max_members=max_members, kernels=False)
    try:
        yield from executor.run(cells)
    finally:
        executor.close()


class EnsembleExecutor(Executor):
    """Batched cells (see the module docstring); others through ``run_fn`` one by one.

    Options: ``memory_mb`` (budget of one hand-kernel chunk, default :data:`DEFAULT_MEMORY_MB`),
    ``func_memory_fraction`` (share of the machine's RAM a torch.func chunk may plan for on the
    CPU, default :data:`catapult.sweep.batched_memory.DEFAULT_FRACTION`; on CUDA the device's
    free memory is the budget, see :mod:`catapult.sweep.batched_memory`), divided by ``workers``,
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
                 max_members: int | None = None, threads: int | None = None, workers: int | None = None,
                 kernels: bool = True, func_memory_fraction: float = DEFAULT_FRACTION):
        super().__init__(run_fn)
        self.kernels = check_flag("EnsembleExecutor", "kernels", kernels)  # kernels="no" used the kernels
        # func_memory_fraction=True was the fraction 1.0 (isinstance(True, int)), np.float32(0.5) was refused
        self.func_memory_fraction = check_real("EnsembleExecutor", "func_memory_fraction", func_memory_fraction,
                                               low=0.0, high=1.0, low_open=True)
        memory_mb = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb  # "100" was a bare TypeError
        memory_mb = check_real("EnsembleExecutor", "memory_mb", memory_mb, low=0.0, low_open=True)
        max_members = check_integer("EnsembleExecutor", "max_members", max_members, optional=True)
        # workers=True ran as 1 worker (isinstance(True, int)) and np.int64(2) was refused
        # at most max_workers() (4 per CPU, the CLI's bound): workers=10**6 spawned a process per chunk
        workers = check_integer("EnsembleExecutor", "workers", 1 if workers is None else workers, high=max_workers())
        if workers > 1:
            import pickle

            try:
                pickle.dumps(self.run_fn)
            except Exception as err:
                raise ValueError(f"workers={workers} runs cells in worker processes, so run_fn must be "
                                 f"picklable (a module-level function); {self.run_fn!r} is not: {err}") from None
        self.memory_mb = float(memory_mb)
        self.max_members = max_members
        self.threads = check_threads("EnsembleExecutor", threads)
        self.workers = workers
        self.fallbacks: list[tuple[int, str]] = []
        self.chunks: list[list[int]] = []
        self.engines: dict[int, str] = {}  # cell id -> the batched engine that trained it
        # cells of torch.func groups whose chunks may hold two members: a lone member of a
        # conv model runs beside a copy there (batched_model.StackedModel.pad_lone)
        self._pairs: set[int] = set()
        self._data: dict[str, Any] = {}  # data section (JSON) -> train.load_data(config), from plan
        self._pool = None

    def describe(self) -> str:
        """The ensemble executor and its worker processes.

        >>> EnsembleExecutor(workers=1).describe()
        'the ensemble executor (cells batched into one model, in this process)'
        """
        where = "in this process" if self.workers == 1 else f"in {self.workers} worker processes"
        return f"the ensemble executor (cells batched into one model, {where})"

    def plan(self, cells: Sequence[Cell]) -> tuple[list[tuple[str, list[Cell]]], list[tuple[Cell, str]]]:
        """``(chunks, local)``: batched chunks as ``(engine, cells)`` (each within the memory
        budget, and at least ``workers`` per group) and the cells to run locally with the
        reason. A cell goes to the hand-derived kernels when they reproduce it (and
        ``kernels`` is on), else to the torch.func engine when that does, else runs locally."""
        from catapult.sweep.batched import batched_unsupported_reason

        groups: dict[tuple[str, str], list[Cell]] = {}
        local: list[tuple[Cell, str]] = []
        self._pairs = set()
        for cell in cells:
            try:
                config = cfg.validate(cell.config)
                reason = unsupported_reason(config) if self.kernels else "kernels off"
                engine = "kernels"
                if reason is not None:
                    engine, reason = "func", batched_unsupported_reason(config)
            except Exception as err:  # the local path reports it as the cell's failure
                reason = f"{type(err).__name__}: {err}"
            if reason is not None:
                local.append((cell, reason))
            else:
                groups.setdefault((engine, group_key(config)), []).append(cell)
        chunks: list[tuple[str, list[Cell]]] = []
        for (engine, _), members in groups.items():
            cap = self._chunk_size(cfg.validate(members[0].config), members, engine)
            if engine == "func" and cap >= 2:
                self._pairs.update(c.id for c in members)
            size = min(cap, len(members))
            count = -(-len(members) // size)
            if self.workers > 1:
                count = max(count, min(self.workers, len(members)))
                chunks.extend((engine, members[i::count]) for i in range(count))
            else:
                chunks.extend((engine, members[i:i + size]) for i in range(0, len(members), size))
        return chunks, local

    @staticmethod
    def _data_key(config: Mapping[str, Any]) -> str:
        """The key of :attr:`_data`: the validated config's data section."""
        return canonical_json(config["data"])

    def _chunk_size(self, config: Mapping[str, Any], members: Sequence[Cell], engine: str = "kernels") -> int:
        """Members a chunk of ``members``' group may hold: the memory budget's, at most
        ``max_members`` (not capped by the group's size)."""
        from catapult import engine as train

        try:
            data = train.load_data(config)
        except Exception:
            return 1  # the run reports the error
        # kept for run_ensemble (one copy per data section): digits take ~0.1 s to load
        self._data[self._data_key(config)] = data
        n_train = data.x_train.shape[0]
        batch = config["train"]["batch_size"] or n_train
        if engine == "kernels":
            per = member_bytes(config, data.in_features, data.num_classes, batch, data.x_test.shape[0])
            size = max(1, int(self.memory_mb * 2**20 // per))
        else:  # torch.func: measured per-member bytes against the device's budget, per worker
            budget = memory_budget(train.resolve_device(config["device"]), self.func_memory_fraction)
            try:
                size = chunk_members(config, data, budget // self.workers)[0]
            except Exception:
                return 1  # the run reports the error

        if self.max_members is not None:
            size = min(size, self.max_members)
        return size

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
        cells = list(cells)
        chunks, local = self.plan(cells)
        if self.workers > 1:
            yield from self._run_in_workers(chunks, local)
            return
        for cell, reason in local:
            self.fallbacks.append((cell.id, reason))
            yield cell.id, run_cell(self.run_fn, cell, self.threads)
        for engine, chunk in chunks:
            self.chunks.append([c.id for c in chunk])
            data = self._data.get(self._data_key(cfg.validate(chunk[0].config)))
            pad = chunk[0].id in self._pairs
            for cell_id, result, reason in _run_batched_chunk(chunk, self.run_fn, self.threads, data, engine, pad):
                if reason is not None:
                    self.fallbacks.append((cell_id, reason))
                else:
                    self.engines[cell_id] = engine
                yield cell_id, result
        self._data.clear()

    def _run_in_workers(self, chunks: list[tuple[str, list[Cell]]],
                        local: list[tuple[Cell, str]]) -> Iterator[tuple[int, CellResult]]:
        from catapult.sweep.workers import StreamPool

        self._data.clear()  # the workers load their own
        if self._pool is None:
            threads = self.threads or max(1, torch.get_num_threads() // self.workers)
            self._pool = StreamPool(self.workers, threads)
        # key -> (cells, local reason, tries, engine)
        jobs: dict[int, tuple[list[Cell], str | None, int, str]] = {}

        def submit(chunk: list[Cell], reason: str | None, tries: int, engine: str = "kernels") -> None:
            key = len(jobs)
            jobs[key] = (chunk, reason, tries, engine)
            pad = chunk[0].id in self._pairs
            self._pool.submit(key, _chunk_job, (chunk, self.run_fn, self._pool.threads, reason, engine, pad))

        for engine, chunk in chunks:  # the big jobs first, local cells fill the gaps
            self.chunks.append([c.id for c in chunk])
            submit(chunk, None, 1, engine)
        for cell, reason in local:
            submit([cell], reason, 1)
        delivered: set[int] = set()
        for kind, key, value in self._pool.events():
            if kind == "item":
                cell_id, result, reason = value
                delivered.add(cell_id)
                if reason is not None:
                    self.fallbacks.append((cell_id, reason))
                elif jobs[key][1] is None:
                    self.engines[cell_id] = jobs[key][3]
                yield cell_id, result
            elif kind in ("error", "lost"):
                chunk, reason, tries, engine = jobs[key]
                rest = [c for c in chunk if c.id not in delivered]
                if kind == "lost" and tries < 2 and rest:
                    submit(rest, reason, tries + 1, engine)
                    continue
                for cell in rest:
                    delivered.add(cell.id)
                    yield cell.id, CellResult("failed", [], {}, error=f"ensemble worker: {value}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
