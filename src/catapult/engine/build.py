"""A run's set-up, written once: everything :func:`catapult.engine.run`, the batched engine,
the sweep's lambda_0 cache, ``critical-lr`` and ``coord-check`` need before the first step.

:func:`build_run` turns a validated config into a :class:`Run` (through :func:`assemble_run`,
which the data-parallel :func:`catapult.engine.distributed.train_ddp` calls with its own model
and shard batches): device, dtype, the three seeds,
the data and the batch stream (:mod:`catapult.engine.run_data`), the model, the loss, and -- built on first use, in that order of
dependence -- the lambda_0 measurement, the target learning rate, the optimizer and the warmup
rule. Every part that can fail on bad input (data files, shapes, the batch size) fails inside
:func:`build_run`, before any file is written or any step is taken. The seeds, the model's
initial weights and the start vector of the eigen-solver follow the rules in
:mod:`catapult.engine.loop`'s docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from catapult import config as cfg
from catapult.config.checks import sparsity_steps, step_size_factor
from catapult.losses import get_loss
from catapult.optim import registry
from catapult.engine.model_size import (MODELS, check_fits, check_labels, check_model_fits, check_spectrum_fits,
                                        gpt_context, model_parameters, size_error, training_fit)
from catapult.engine.fsdp import check_fsdp
from catapult.engine.run_data import (BatchStream, RunData, batch_stream, build_augment, lambda0_batches, load_data,
                                      load_data_once)
from catapult.engine.seeds import seeds
from catapult.engine.sharpness_rule import ADAPTIVE, SharpnessRule, sharpness_rule, solver_options, threshold

__all__ = [
    "Run", "build_run", "assemble_run", "seeds", "resolve_device", "MODELS", "RunData", "load_data", "load_data_once", "build_model", "model_parameters", "check_model_fits", "check_labels",
    "lambda0_batches", "OPTIMIZERS", "ADAPTIVE", "build_optimizer", "WARMUPS", "build_schedule", "search_delta",
    "search_lr_start", "search_rtol", "Warmup", "build_warmup", "check_warmup_across_processes", "BatchStream", "batch_stream", "build_augment", "solver_options", "SharpnessRule",
    "sharpness_rule", "threshold", "build_mask_updater",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; a CUDA device that is missing (no CUDA, or
    an index past the visible devices) is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError([("device", f"{name!r} requested but CUDA is not available; use cpu or auto")])
    # the index as written: torch.device keeps it in 8 bits (cuda:256 is cuda:0, cuda:200 is cuda:-56)
    # and refuses one past 32 bits with a RuntimeError
    if kind == "cuda" and index.isdigit() and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()  # was torch's "invalid device ordinal" from the first allocation
        raise cfg.ConfigError([("device", f"{name!r} requested but this machine has {count} CUDA device(s), "
                                          f"cuda:0 to cuda:{count - 1}")])
    return torch.device(name)


def build_model(config: Mapping[str, Any], in_features: int, out_features: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                fit: Mapping[str, int] | None = None) -> nn.Module:
    """The config's model, initialized from ``seeds(config["seed"])[0]`` on the CPU in float32,
    then moved to ``device``/``dtype`` (same initial weights on every device).

    A model whose weights alone exceed the memory of the CPU or of ``device``
    (:func:`model_parameters`) is a :class:`~catapult.config.ConfigError` naming its width and
    depth keys, raised before anything is allocated; ``fit`` (a run that trains it:
    :func:`~catapult.engine.model_size.training_fit`) counts its gradients and the optimizer's
    state too."""
    init_seed = seeds(config["seed"])[0]
    try:
        check_fits(config, in_features, out_features, torch.device(device), dtype, **(fit or {}))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            with torch.device("cpu"):
                model = MODELS[config["model"]["name"]](config["model"], in_features, out_features)
        model = model.float()
        return model.to(device=device, dtype=dtype)
    except (MemoryError, RuntimeError, TypeError, OverflowError) as err:
        raise size_error(config["model"], err, context=gpt_context(config, in_features)) from None


def _param_groups(model: nn.Module, lr: float, kind: str) -> list[dict]:
    """Per-layer groups (muP/SμPar LR multipliers in ``group["lr_mult"]``), neighbours with equal
    settings merged (``param_groups(merge=True)``: torch's optimizers pay ~40 µs of Python per
    group and step on CPU, 3.4% of a batch-128 step of the digits MLP; SP has one group)."""
    from catapult.parametrize import param_groups

    return param_groups(model, lr, optimizer=kind, merge=True)


def _load_unmerged_groups(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict | None:
    """``load_state_dict`` pre-hook of the engine's optimizers: a ``state_dict`` saved with one
    group per kind (the engine before groups were merged, or ``param_groups()`` without
    ``merge``) over the same parameters is merged as this optimizer's groups are (the
    parameters' order across the groups is the same, so the state's indices are). Saved groups
    that would become one but whose settings differ are refused, naming them; any other layout
    is left to torch's loader and its message."""
    from catapult.parametrize import group_settings

    saved, ours = state_dict.get("param_groups"), optimizer.param_groups
    if not (isinstance(saved, list) and len(saved) > len(ours)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved)):
        return None
    merged, i = [], 0
    for group in ours:
        run, count = [], 0
        while i < len(saved) and count < len(group["params"]):
            run.append(saved[i])
            count, i = count + len(saved[i]["params"]), i + 1
        if count != len(group["params"]):
            return None
        first = group_settings(run[0])
        for other in run[1:]:
            settings = group_settings(other)
            if settings != first:
                keys = sorted(k for k in settings.keys() | first.keys() if settings.get(k) != first.get(k))
                raise ValueError(
                    f"load_state_dict: saved param groups {run[0].get('name', '?')!r} and {other.get('name', '?')!r} "
                    f"differ in {', '.join(map(str, keys))}, but this optimizer updates their parameters as one "
                    f"group ({group.get('name', '?')!r}, built with equal settings); it cannot take this state")
        merged.append(dict(run[0], params=[index for g in run for index in g["params"]], name=group.get("name")))
    if i != len(saved):
        return None
    state_dict = dict(state_dict, param_groups=merged)
    check = getattr(optimizer, "_check_state_shapes", None)  # GI-Adam's, skipped where the group counts differed
    if check is not None:
        check(state_dict)
    return state_dict


def _optimizer_options(name: str, o: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor keywords of optimizer ``name`` from the ``optimizer`` config section."""
    if registry.get(name).family == "sgd":
        return dict(momentum=o["momentum"], weight_decay=o["weight_decay"])
    options = dict(betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    if name == "gi-adam":   # v0="random": drawn from the run's init seed
        options.update(v_bias_correction=o["v_bias_correction"], v0=o["v0"], seed=int(o.get("_seed", 0)))
    return options


def _builder(name: str) -> Callable[[nn.Module, float, Mapping[str, Any]], torch.optim.Optimizer]:
    spec = registry.get(name)

    def build(model: nn.Module, lr: float, o: Mapping[str, Any]) -> torch.optim.Optimizer:
        optimizer = spec.build(_param_groups(model, lr, spec.family), lr=lr, **_optimizer_options(name, o))
        optimizer.register_load_state_dict_pre_hook(_load_unmerged_groups)
        return optimizer

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


#: optimizer.name -> builder(model, lr_trgt, optimizer_config) -> torch.optim.Optimizer
#: (the names and classes are catapult.optim.registry's).
OPTIMIZERS: dict[str, Callable[[nn.Module, float, Mapping[str, Any]], torch.optim.Optimizer]] = {
    name: _builder(name) for name in registry.names()}


def build_optimizer(config: Mapping[str, Any], model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer over ``model``'s parameter groups at base learning rate ``lr``.

    Builders get ``config["optimizer"]`` plus ``"_seed"`` = the run's init seed (GI-Adam draws
    ``v0: random`` from it, so each ``seed`` gets its own random ``v_0``)."""
    options = dict(config["optimizer"], _seed=seeds(config["seed"])[0] % (2 ** 31))
    optimizer = OPTIMIZERS[config["optimizer"]["name"]](model, lr, options)
    _check_group_step_range(config, optimizer, lr)
    return optimizer


def _step_size_beyond_range(config: Mapping[str, Any], lr: float, mult: float = 1.0) -> str | None:
    """Why the largest step size an ``lr`` makes is beyond the run dtype's range (torch hands the
    update one scalar of the parameters' dtype: ``lr * lr_mult``, and Adam's ``/ (1 - beta1)`` at the
    first step, :func:`~catapult.config.checks.step_size_factor`), or None within it: the text
    after the value in a ConfigError, e.g. ``"... = 4e+38, beyond the range of float32 (max 3.403e+38)"``.

    >>> _step_size_beyond_range({"dtype": "float32", "optimizer": {"name": "adam", "betas": [0.9, 0.999]}}, 1e38)
    'makes a step size lr / (1 - beta1) = 1e+39, beyond the range of float32 (max 3.403e+38)'
    """
    top = torch.finfo(getattr(torch, config["dtype"])).max
    factor = step_size_factor(config["optimizer"])
    if lr * mult * factor <= top:
        return None
    formula = "lr" + (" * lr_mult" if mult != 1.0 else "") + (" / (1 - beta1)" if factor != 1.0 else "")
    return f"makes a step size {formula} = {lr * mult * factor:g}, beyond the range of {config['dtype']} (max {top:.4g})"


def _check_group_step_range(config: Mapping[str, Any], optimizer: torch.optim.Optimizer, lr: float) -> None:
    """A ConfigError naming the lr key when a param group's step size, the lr times the group's
    muP/SμPar ``lr_mult`` (:func:`_step_size_beyond_range`), is beyond the dtype's range: the
    config's checks bound the lrs themselves, but a multiplier above 1 (SμPar at a width below
    ``base_width``: 80 at width 8, base 64, density 0.1) took ``1e38`` to a RuntimeError from torch
    ("value cannot be converted to type float without overflow") at the first step."""
    from catapult.parametrize import group_lr_mult

    mult = max((group_lr_mult(group) for group in optimizer.param_groups), default=1.0)
    if mult <= 1.0:  # the lrs alone: checked by the config and Run.lr_target
        return
    sched = config["schedule"]
    for key, value in (("optimizer.lr", lr), ("schedule.lr_init", sched["lr_init"]),
                       ("schedule.lr_final", sched["lr_final"])):
        why = None if value is None else _step_size_beyond_range(config, value, mult)
        if why:
            raise cfg.ConfigError([(key, f"{value:g} times the largest param group lr multiplier {mult:g} (model."
                                         f"parametrization {config['model']['parametrization']}) {why}; use a "
                                         f"smaller value or dtype: float64")])


def _linear_warmup(schedule_cfg: Mapping[str, Any], lr_trgt: float, steps: int) -> Callable[[int], float]:
    from catapult import schedules

    decay = schedule_cfg["decay"]
    check_lr_final(schedule_cfg, lr_trgt)
    check_lr_init(schedule_cfg, lr_trgt)
    return schedules.warmup(
        lr_trgt,
        schedule_cfg["warmup_steps"],
        lr_init=schedule_cfg["lr_init"],
        power=schedule_cfg["power"],
        decay=None if decay == "constant" else decay,
        total_steps=None if decay == "constant" else steps,
        lr_final=schedule_cfg["lr_final"],
    )


#: schedule.warmup -> builder(schedule_config, lr_trgt, total_steps) -> (step -> lr)
WARMUPS: dict[str, Callable[[Mapping[str, Any], float, int], Callable[[int], float]]] = {
    "linear": _linear_warmup,
}


def build_schedule(config: Mapping[str, Any], lr_trgt: float) -> Callable[[int], float]:
    """``t -> lr_t`` for the config's schedule with target ``lr_trgt`` over ``train.steps``
    (rules that need the model -- catapult, persistent -- go through :func:`build_warmup`)."""
    rule = config["schedule"]["warmup"]
    if rule not in WARMUPS:
        raise ValueError(f"schedule.warmup={rule!r} needs the model and optimizer: use build_warmup")
    return WARMUPS[rule](config["schedule"], lr_trgt, config["train"]["steps"])


def check_lr_final(schedule_cfg: Mapping[str, Any], lr_trgt: float) -> None:
    """A ConfigError naming ``schedule.lr_final`` when a decay would rise from ``lr_trgt`` to it: the config
    check refuses it for an absolute lr, and for one relative to lambda_0 (``c/lambda0``) this is where
    ``lr_trgt`` is first known."""
    final = schedule_cfg["lr_final"]
    if schedule_cfg["decay"] != "constant" and final is not None and float(final) > lr_trgt:
        raise cfg.ConfigError([("schedule.lr_final", f"{float(final):g} exceeds the target lr {lr_trgt:g}; the "
                                                     f"{schedule_cfg['decay']} decay falls from lr_trgt to lr_final")])


def check_lr_init(schedule_cfg: Mapping[str, Any], lr_trgt: float) -> None:
    """A ConfigError naming ``schedule.lr_init`` when the linear warmup would fall from it to ``lr_trgt``:
    the config check refuses it for an absolute lr; for a ``c/lambda0`` one ``lr_trgt`` is first known here."""
    init = float(schedule_cfg["lr_init"])
    if init > lr_trgt:
        raise cfg.ConfigError([("schedule.lr_init", f"{init:g} exceeds the target lr {lr_trgt:g}; the linear warmup "
                                                    f"rises from lr_init to lr_trgt")])


def search_delta(config: Mapping[str, Any]) -> float:
    """``schedule.delta``, or the paper's default: 0.1 for SGD, 0.01 for Adam-family optimizers."""
    delta = config["schedule"]["delta"]
    if delta is not None:
        return float(delta)
    return 0.1 if config["optimizer"]["name"] == "sgd" else 0.01


def search_rtol(config: Mapping[str, Any]) -> float | None:
    """``schedule.rtol``: the critical-lr search's bracket tolerance (None: the delta stop only)."""
    rtol = config["schedule"].get("rtol")
    return None if rtol is None else float(rtol)


def search_lr_start(config: Mapping[str, Any], lr_trgt: float) -> float:
    """``schedule.lr_start``, or ``min(1e-4, lr_trgt)``. An explicit start above ``lr_trgt`` is a
    ConfigError: the config check refuses it for an absolute lr, and for one relative to lambda_0
    (``c/lambda0``) this is where ``lr_trgt`` is first known."""
    start = config["schedule"]["lr_start"]
    if start is not None and float(start) > lr_trgt:
        raise cfg.ConfigError([("schedule.lr_start", f"{float(start):g} exceeds the target lr {lr_trgt:g} "
                                                     f"(optimizer.lr={config['optimizer']['lr']}); the search "
                                                     f"starts below lr_trgt")])
    return min(lr_trgt, 1e-4 if start is None else float(start))


@dataclass
class Warmup:
    """What :func:`build_warmup` returns.

    ``schedule``: ``t -> lr_t`` for :func:`catapult.schedules.attach`; ``persistent``: the
    :class:`~catapult.schedules.PersistentCatapultWarmup` the loop calls every step (or None);
    ``info``: scalars for the summary (``lr_critical``, ``lr_critical_lower``,
    ``lr_critical_upper``, ``search_forward_passes``; empty for a linear warmup).
    """

    schedule: Callable[[int], float]
    persistent: Any = None
    info: dict = field(default_factory=dict)


def check_warmup_across_processes(config: Mapping[str, Any]) -> None:
    """A ConfigError naming ``schedule.warmup`` when the config's warmup cannot run across
    data-parallel processes: the persistent rule, whose repeated searches are not written for
    ranks (linear and catapult warmup can)."""
    if config["schedule"]["warmup"] == "persistent":
        raise cfg.ConfigError([("schedule.warmup", "the persistent catapult warmup is not run across processes; "
                                                   "use linear or catapult")])


def build_warmup(config: Mapping[str, Any], lr_trgt: float, model: nn.Module, loss_fn, batch0,
                 optimizer: torch.optim.Optimizer, *, distributed: bool = False) -> Warmup:
    """The config's warmup rule at ``lr_trgt``:

    * ``linear``: :func:`build_schedule`.
    * ``catapult``: ``lr_c = critical_lr(model, loss_fn, batch0, optimizer, lr_start,
      lr_max=lr_trgt, delta, rtol)`` at step 0 (forward passes only, nothing changed), then
      ``catapult_warmup(lr_trgt, warmup_steps, lr_c)`` with the config's decay:
      ``lr(t) = min(lr_trgt, lr_c + lr_trgt t / T_wrm)``. Where ``L(theta_0)`` is not finite there is
      no ``lr_c`` (the run diverges at step 0, a result): the schedule starts at ``lr_start``.
    * ``persistent``: a ``PersistentCatapultWarmup(optimizer, model, loss_fn, lr_trgt, delta,
      lr_start)``; the schedule reads its current lr (the engine calls ``persistent.step`` at
      every step before the update, which may re-run the search).

    ``distributed``: ``batch0`` is this rank's shard of a data-parallel run; the catapult search
    then runs on the union batch (``critical_lr(distributed=True)``: the same ``lr_c`` on every
    rank). The persistent rule's searches are not run across processes: a ConfigError naming
    ``schedule.warmup``.
    """
    from catapult import schedules
    from catapult.critical_lr import NonFiniteLossError, critical_lr

    sched, steps = config["schedule"], config["train"]["steps"]
    rule = sched["warmup"]
    check_lr_final(sched, lr_trgt)  # before the catapult search
    if rule == "linear":
        return Warmup(build_schedule(config, lr_trgt))
    if distributed:
        check_warmup_across_processes(config)
    delta, lr_start = search_delta(config), search_lr_start(config, lr_trgt)
    if rule == "catapult":
        try:
            res = critical_lr(model, loss_fn, batch0, optimizer, lr_start=lr_start, lr_max=lr_trgt, delta=delta,
                              rtol=search_rtol(config), distributed=distributed)
        except NonFiniteLossError:  # L(theta_0) is not finite: the run diverges at step 0, before any
            res = None              # update, as under linear and persistent warmup; it logs lr_start
        decay = sched["decay"]
        fn = schedules.catapult_warmup(lr_trgt, sched["warmup_steps"], lr_start if res is None else res.lr,
                                       decay=None if decay == "constant" else decay,
                                       total_steps=None if decay == "constant" else steps,
                                       lr_final=sched["lr_final"])
        if res is None:
            return Warmup(fn)
        return Warmup(fn, None, dict(lr_critical=res.lr, lr_critical_lower=res.lower,
                                     lr_critical_upper=res.upper, search_forward_passes=res.forward_passes))
    from catapult.engine.persistent_warmup import RunPersistentWarmup  # a non-finite first step: a result

    pcw = RunPersistentWarmup(optimizer, model, loss_fn, lr_trgt, delta, lr_start=lr_start, rtol=search_rtol(config))
    return Warmup(lambda t: pcw.lr if pcw.lr is not None else lr_start, pcw, {})


# --------------------------------------------------------------------------------------------
# The run builder


@dataclass(eq=False)
class Run:
    """Everything a run is made of, built by :func:`build_run` from a validated config.

    Built at once: ``config``, ``device``, ``dtype``, ``seeds`` (init, data, sharpness),
    ``data`` (:class:`RunData`; None for a data-parallel run, whose batches and held-out
    windows come from token shards), ``batches`` (:class:`BatchStream`, or any object with its ``batch(t)`` and
    ``first_batches(k)``), ``model`` (in train mode), ``loss_fn``, ``n_params``, ``sharpness``
    (:class:`SharpnessRule`), ``start_vector`` (``randn(P)`` from the sharpness seed, the
    eigen-solver's first start), ``test_set`` (``(x, y)`` the loop evaluates on, or None) and
    ``distributed`` (each batch is this rank's shard of a
    data-parallel run: measurements and the catapult search run on the union batch).

    Built on first use (each once): ``lambda0_estimate`` (Hessian sharpness at ``theta_0`` on
    batch 0 from ``start_vector``), ``lambda_0``, ``lr_target`` (``optimizer.lr`` resolved
    against lambda_0 when it is ``"c/lambda0"``), ``optimizer`` (at ``lr_target``), ``warmup``
    (:class:`Warmup`; a catapult warmup runs its critical-lr search here).
    """

    config: dict
    device: torch.device
    dtype: torch.dtype
    seeds: tuple[int, int, int]
    data: RunData | None
    batches: Any
    model: nn.Module
    loss_fn: Callable
    n_params: int
    sharpness: SharpnessRule
    start_vector: torch.Tensor
    test_set: tuple | None = None
    distributed: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def needs_lambda0(self) -> bool:
        """Whether the run measures lambda_0: it tracks sharpness or its lr is ``c/lambda0``."""
        return self.config["eval"]["sharpness_every"] > 0 or cfg.lr_needs_lambda0(self.config["optimizer"]["lr"])

    @property
    def lambda0_estimate(self):
        """Hessian sharpness at initialisation on batch 0 (an ``EigenEstimate``)."""
        return self._once("lambda0", lambda: self.sharpness.hessian(
            self.model, self.loss_fn, self.batches.batch(0), None, self.start_vector))

    @property
    def lambda0_estimates(self) -> list:
        """The ``k = lambda0_batch_count(config)`` estimates lambda_0 averages: batch 0's
        (:attr:`lambda0_estimate`, on the training batch 0 itself: augmented when
        ``data.augment`` is on, since the step-0 sharpness reuses it), then batches ``1 .. k-1``
        of the run's batch order without augmentation (:meth:`BatchStream.first_batches`, a
        fresh stream with the data seed, so training's stream is untouched), each warm-started
        from batch 0's eigenvector. The batched engines measure the same batches."""
        from catapult.engine.step import lambda0_batch_count

        def measure() -> list:
            first = self.lambda0_estimate
            out = [first]
            for batch in self.batches.first_batches(lambda0_batch_count(self.config))[1:]:
                out.append(self.sharpness.hessian(self.model, self.loss_fn, batch, None, first.vector))
            return out

        return self._once("lambda0_all", measure)

    @property
    def lambda_0(self) -> float:
        """``mean_b lambda_max(H_b(theta_0))`` over :attr:`lambda0_estimates` (the paper: 10 batches)."""
        values = [float(e.value) for e in self.lambda0_estimates]
        return float(sum(values) / len(values))

    @property
    def lr_target(self) -> float:
        """The target learning rate; a ``c/lambda0`` lr that cannot resolve is a ConfigError
        naming ``optimizer.lr``."""
        def resolve() -> float:
            spec = cfg.parse_lr(self.config["optimizer"]["lr"])
            try:
                lr = spec.resolve(self.lambda_0 if spec.relative else None)
            except ValueError as err:
                if spec.relative and not math.isfinite(self.lambda_0):  # the model is non-finite at theta_0
                    err = (f"lambda_0 is {self.lambda_0}: the loss or its curvature at initialisation is not "
                           f"finite, so c/lambda0 names no lr; give an absolute lr to record the divergence")
                raise cfg.ConfigError([("optimizer.lr", f"{self.config['optimizer']['lr']!r}: {err}")]) from None
            top = torch.finfo(self.dtype).max
            if not lr <= top:  # c/lambda_0 with a tiny lambda_0: torch would overflow at the first step
                raise cfg.ConfigError([("optimizer.lr", f"{self.config['optimizer']['lr']!r} resolves to {lr:g} "
                                                        f"(lambda_0 = {self.lambda_0:g}), beyond the range of "
                                                        f"{self.config['dtype']} (max {top:.4g})")])
            why = _step_size_beyond_range(self.config, lr)  # Adam's lr / (1 - beta1): a RuntimeError at step 1
            if why:
                raise cfg.ConfigError([("optimizer.lr", f"{self.config['optimizer']['lr']!r} resolves to {lr:g} "
                                                        f"(lambda_0 = {self.lambda_0:g}), which {why}")])
            if lr > 0 and float(torch.tensor(lr, dtype=self.dtype)) == 0.0:  # every step would be 0
                raise cfg.ConfigError([("optimizer.lr", f"{self.config['optimizer']['lr']!r} resolves to {lr:g}, "
                                                        f"which is 0 in {self.config['dtype']}: the run would not move")])
            return lr

        return self._once("lr_target", resolve)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._once("optimizer", lambda: build_optimizer(self.config, self.model, self.lr_target))

    @property
    def mask_updater(self):
        """The :class:`~catapult.sparsity.MaskUpdater` of ``model.sparsity`` (None when the
        model has no masks): the loop calls ``mask_updater.step(t, optimizer)`` after every update."""
        return self._once("mask_updater", lambda: build_mask_updater(self.config, self.model))

    @property
    def warmup(self) -> "Warmup":
        return self._once("warmup", lambda: build_warmup(self.config, self.lr_target, self.model, self.loss_fn,
                                                         self.batches.batch(0), self.optimizer,
                                                         distributed=self.distributed))


def build_mask_updater(config: Mapping[str, Any], model: nn.Module):
    """``model.sparsity`` as a :class:`~catapult.sparsity.MaskUpdater` over ``train.steps``
    (``T_end = end_fraction * steps``, GMP's ``t_0 = start_fraction * steps``); None without masks,
    with static masks, or for a run of 0 steps (no update to follow)."""
    from catapult.sparsity import MaskUpdater, masked_modules

    sp, steps = config["model"]["sparsity"], config["train"]["steps"]
    if sp["method"] == "static" or steps == 0 or next(masked_modules(model), None) is None:
        return None
    start_step, end_step = sparsity_steps(sp, steps)
    return MaskUpdater(model, sp["method"], final_density=config["model"]["density"],
                       update_every=sp["update_every"], drop_fraction=sp["drop_fraction"],
                       end_step=end_step, start_step=start_step)


def build_run(config: Mapping[str, Any], *, trains: bool = False) -> Run:
    """Validate ``config`` and build its :class:`Run` (data loaded, model initialised); data that
    are token shards (:func:`~catapult.engine.shard_run.reads_shards`) are ``train-ddp``'s run in
    one process (:func:`~catapult.engine.shard_run.build_shard_run`).

    Raises :class:`~catapult.config.ConfigError` (or the data loader's FileNotFoundError) on
    bad input, before any training work: a model too large for the memory it is built in among
    them, counting its gradients and the optimizer's state too where ``trains``
    (:func:`~catapult.engine.model_size.training_fit`, as a sweep's up-front check counts).
    """
    config = cfg.validate(config)
    check_fsdp(config, distributed=False)  # sharding is catapult train-ddp's
    device = resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    fit = training_fit(config) if trains else {}
    check_model_fits(config, device, **fit)  # before loading data: a mistyped width fails in milliseconds
    from catapult.engine.shard_run import build_shard_run, reads_shards

    if reads_shards(config["data"]):  # train-ddp's token shards: its run (one process) and its config.yaml
        return build_shard_run(config, device, trains=trains)
    data = load_data(config, device, dtype)
    batches = batch_stream(config, data)
    model = build_model(config, data.in_features, data.num_classes, device, dtype, fit=fit)
    check_labels(config, model, data)   # a model of yours with fewer outputs than labels: before any work
    return assemble_run(config, model, batches, device, data=data)


def assemble_run(config: dict, model: nn.Module, batches: Any, device: torch.device, *,
                 data: RunData | None = None, test_set: tuple | None = None, distributed: bool = False) -> Run:
    """The :class:`Run` of a validated ``config`` from its ``model`` (built by :func:`build_model`,
    on ``device`` in the config's dtype) and its ``batches``: the parts :func:`build_run` and the
    data-parallel run (:func:`catapult.engine.distributed.train_ddp`) share. Puts the model in
    train mode; a model with more parameters than the configured spectrum can hold is a
    ConfigError here, before any work. ``test_set`` defaults to ``data``'s test split."""
    dtype = getattr(torch, config["dtype"])
    run_seeds = seeds(config["seed"])
    model.train()
    n_params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    check_spectrum_fits(config, n_params)  # the Hessian has n_params eigenvalues: now, not at step 0
    start = torch.randn(n_params, generator=torch.Generator().manual_seed(run_seeds[2]))
    return Run(config=config, device=device, dtype=dtype, seeds=run_seeds, data=data, batches=batches,
               model=model, loss_fn=get_loss(config["loss"]), n_params=n_params,
               sharpness=sharpness_rule(config, model, distributed=distributed),
               start_vector=start.to(device=device, dtype=dtype), distributed=distributed,
               test_set=test_set if test_set is not None or data is None else (data.x_test, data.y_test))
