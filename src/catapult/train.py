"""The training engine: one loop for full-batch GD, minibatch SGD (+momentum), Adam, AdamW,
RAdam and GI-Adam, with linear, catapult-initialised or persistent catapult warmup.

``run(config, out_dir=None, progress=None) -> RunResult`` trains the model a config describes
(see :mod:`catapult.config`) and records, per step, the training loss/accuracy and learning
rate; every ``eval.sharpness_every`` steps the sharpness; every ``eval.test_every`` steps and at
the end the test loss/accuracy. A diverged run is a result (``status == "diverged"``), never an
exception.

Exact semantics (a batched-ensemble engine must reproduce these to float tolerance)
------------------------------------------------------------------------------------
Seeds. ``seed`` is expanded by ``numpy.random.SeedSequence(seed).generate_state(3)`` into three
independent 32-bit seeds: ``init_seed`` (model init), ``data_seed`` (batch order),
``sharpness_seed`` (the eigen-solver's first start vector). Each drives its own
``torch.Generator`` (CPU); nothing reads or changes the global RNG.

Init. Under ``torch.random.fork_rng`` with ``torch.manual_seed(init_seed)``, the model is built
on the CPU in float32 (the same initial weights on every device; float64 runs start from the
float32 weights cast up), then moved to ``device``/``dtype``. The data are cast to ``dtype``.

Batches. Full-batch GD (``train.batch_size: null``): every step uses the whole training set in
its stored order. Minibatch SGD with batch size ``B``: epoch ``e`` draws
``perm_e = torch.randperm(n_train, generator=data_gen)`` (epochs in order, one draw each);
batch ``b`` of the epoch is ``perm_e[b*B:(b+1)*B]``; the last incomplete batch is dropped.
Step ``t`` uses the ``t``-th batch of that stream (epoch ``t // (n_train // B)``).

lambda_0. If sharpness is measured at all (``sharpness_every > 0``) or the learning rate is
``"<c>/lambda0"``, ``lambda_0 = sharpness(theta_0)`` on batch 0 (Hessian sharpness, started from
``randn(P, generator=sharpness_gen)``) before the optimizer exists; ``lr_trgt = c/lambda_0``.

Step ``t = 0, 1, ..., steps`` (row ``t`` describes the parameters ``theta_t`` *before* update ``t``):

1. ``lr_t = schedule(t)`` is already set on the optimizer (the scheduler was created at
   ``t = 0`` and stepped after every update), each group at ``lr_t * group["lr_mult"]``.
2. Forward on batch ``t`` in train mode: ``train_loss_t``, ``train_accuracy_t``.
3. Divergence: if ``train_loss_t`` is not finite or ``> divergence_factor * train_loss_0``,
   row ``t`` is logged (loss, accuracy, lr only) and the run ends with status ``"diverged"``.
4. Backward (``t < steps``): gradients of ``train_loss_t``. With ``schedule.warmup:
   persistent`` the :class:`~catapult.schedules.PersistentCatapultWarmup` is then called with
   batch ``t`` and ``train_loss_t`` and sets ``lr_t`` (re-running the critical-lr search when the
   loss fell below the last search's); row ``t`` logs that lr and its threshold. With
   ``catapult`` the step-0 search ran once before the loop (``build_warmup``).
5. Sharpness, if ``sharpness_every > 0`` and (``t % sharpness_every == 0`` or ``t == steps``):
   on batch ``t`` at ``theta_t``, warm-started from the previous measurement's eigenvector (at
   ``t = 0`` the lambda_0 estimate is reused, not recomputed). For Adam-family optimizers with
   ``eval.sharpness_kind: auto`` it is the pre-conditioned sharpness of the preconditioner the
   update ``t`` is about to apply. It never changes parameters, gradients or optimizer state.
6. Test, if (``test_every > 0`` and ``t % test_every == 0``) or ``t == steps``: loss and
   accuracy on the whole test set in eval mode.
7. Row ``t`` is logged; ``threshold_t = instability_threshold(optimizer)`` at the first param
   group's lr ``lr_t * lr_mult`` (``2/lr_t`` for GD when every ``lr_mult`` is 1, as in the paper's muP).
8. Update (``t < steps``): ``optimizer.step()``, then ``scheduler.step()`` (sets ``lr_{t+1}``).

So ``metrics`` has ``steps + 1`` rows for a finished run (row ``steps`` = the final model, no
update) and ``summary["steps_completed"]`` updates.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from catapult import config as cfg
from catapult.losses import accuracy, get_loss
from catapult.optim import registry

__all__ = [
    "RunResult",
    "run",
    "METRIC_COLUMNS",
    "MODELS",
    "OPTIMIZERS",
    "WARMUPS",
    "seeds",
    "resolve_device",
    "build_model",
    "load_data",
    "RunData",
    "build_optimizer",
    "build_schedule",
    "BatchStream",
    "evaluate",
    "write_metrics",
    "read_metrics",
    "register",
]

#: Columns of ``metrics.csv`` and keys of each ``RunResult.metrics`` row, in order. Unmeasured
#: values are ``None`` (empty cells in the CSV).
METRIC_COLUMNS = (
    "step",
    "lr",
    "threshold",
    "train_loss",
    "train_accuracy",
    "sharpness",
    "sharpness_matvecs",
    "test_loss",
    "test_accuracy",
)
_INT_COLUMNS = {"step", "sharpness_matvecs"}


@dataclass
class RunResult:
    """What :func:`run` returns.

    ``status`` is ``"finished"`` or ``"diverged"``; ``metrics`` one dict per logged step (keys
    :data:`METRIC_COLUMNS`); ``summary`` the scalars also written to ``summary.json``;
    ``config`` the validated config; ``model`` the final model; ``out_dir`` the run directory
    (``None`` if nothing was written).
    """

    status: str
    metrics: list[dict]
    summary: dict
    config: dict
    model: nn.Module | None = None
    out_dir: Path | None = None


# --------------------------------------------------------------------------------------------
# Building blocks (tables that later features extend)


def seeds(seed: int) -> tuple[int, int, int]:
    """``(init_seed, data_seed, sharpness_seed)``: independent streams derived from ``seed``."""
    a, b, c = np.random.SeedSequence(seed).generate_state(3)
    return int(a), int(b), int(c)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; a CUDA device that is missing is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError([("device", f"{name!r} requested but CUDA is not available; use cpu or auto")])
    return device


def _multipliers(model_cfg: Mapping[str, Any]) -> dict[str, float]:
    """``alpha_in`` / ``alpha_out`` for a model builder: 1 under SP, which has no multipliers
    (the config ignores ``alpha_*`` there so one study config can sweep sp, mup and supar)."""
    if model_cfg["parametrization"] == "sp":
        return {"alpha_in": 1.0, "alpha_out": 1.0}
    return {"alpha_in": model_cfg["alpha_in"], "alpha_out": model_cfg["alpha_out"]}


#: Constructor arguments the MLP and the GPT both take straight from ``model.*``.
_COMMON_MODEL_KEYS = ("parametrization", "activation", "density", "base_density", "bias", "mask_method")


def _common_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The builders' shared keyword arguments: :data:`_COMMON_MODEL_KEYS` plus the multipliers."""
    return {**{k: model_cfg[k] for k in _COMMON_MODEL_KEYS}, **_multipliers(model_cfg)}


def _build_mlp(model_cfg: Mapping[str, Any], in_features: int, out_features: int) -> nn.Module:
    from catapult.models import MLP

    kwargs = dict(_common_kwargs(model_cfg), init=model_cfg["init"])
    if model_cfg["base_width"] is not None:
        kwargs["base_width"] = model_cfg["base_width"]
    return MLP(in_features, out_features, width=model_cfg["width"], depth=model_cfg["depth"], **kwargs)


def _build_gpt(model_cfg: Mapping[str, Any], context: int, vocab_size: int) -> nn.Module:
    """The config's GPT: ``width`` = d_model, ``depth`` = blocks; ``context`` from the data."""
    from catapult.models import GPT

    kwargs = dict(_common_kwargs(model_cfg), base_width=model_cfg["base_width"],
                  positions=model_cfg["positions"], tie_embeddings=model_cfg["tie_embeddings"])
    if model_cfg["init_std"] is not None:
        kwargs["init_std"] = model_cfg["init_std"]
    return GPT(vocab_size, d_model=model_cfg["width"], n_layers=model_cfg["depth"],
               n_heads=model_cfg["n_heads"], context=context, **kwargs)


#: model.name -> builder(model_config, in_features, out_features) -> nn.Module. For the mlp
#: ``in_features`` is a flattened sample's size; for the gpt it is the context (tokens per
#: window) and ``out_features`` the vocabulary size.
MODELS: dict[str, Callable[[Mapping[str, Any], int, int], nn.Module]] = {"mlp": _build_mlp, "gpt": _build_gpt}


@dataclass
class RunData:
    """A run's data on its device: train/test tensors, ``in_features`` (a flattened sample's
    size; for token windows the context) and ``num_classes`` (for text: the vocabulary size)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    in_features: int
    num_classes: int


def load_data(config: Mapping[str, Any], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> RunData:
    """The config's ``data:`` section loaded and moved to ``device``; floating inputs are cast to
    ``dtype`` (token ids stay int64). A missing file raises the loader's FileNotFoundError (it
    says where it looked); other bad data settings (more samples than the data hold, an empty
    file) raise :class:`~catapult.config.ConfigError` naming ``data``."""
    from catapult import data as data_mod

    d = config["data"]
    try:
        split = data_mod.load_dataset(d["name"], root=d["root"], n_train=d["n_train"], n_test=d["n_test"],
                                      context=d["context"], val_fraction=d["val_fraction"])
    except (ValueError, TypeError) as err:  # e.g. n_train larger than the data: name the section
        if isinstance(err, cfg.ConfigError):
            raise
        raise cfg.ConfigError([("data", str(err))]) from None

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)

    return RunData(inputs(split.x_train), split.y_train.to(device), inputs(split.x_test),
                   split.y_test.to(device), int(np.prod(split.x_train.shape[1:])), int(split.num_classes))


def build_model(config: Mapping[str, Any], in_features: int, out_features: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The config's model, initialized from ``seeds(config["seed"])[0]`` on the CPU in float32,
    then moved to ``device``/``dtype`` (same initial weights on every device)."""
    init_seed = seeds(config["seed"])[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        with torch.device("cpu"):
            model = MODELS[config["model"]["name"]](config["model"], in_features, out_features)
    model = model.float()
    return model.to(device=device, dtype=dtype)


def _param_groups(model: nn.Module, lr: float, kind: str) -> list[dict]:
    """Per-layer groups (muP/SμPar LR multipliers in ``group["lr_mult"]``)."""
    import catapult

    return catapult.param_groups(model, lr, optimizer=kind)


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
        return spec.build(_param_groups(model, lr, spec.family), lr=lr, **_optimizer_options(name, o))

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


#: optimizer.name -> builder(model, lr_trgt, optimizer_config) -> torch.optim.Optimizer
#: (the names and classes are catapult.optim.registry's).
OPTIMIZERS: dict[str, Callable[[nn.Module, float, Mapping[str, Any]], torch.optim.Optimizer]] = {
    name: _builder(name) for name in registry.names()}
#: Optimizers whose sharpness is the pre-conditioned one (``eval.sharpness_kind: auto``):
#: ``registry.preconditioned_names()``. RAdam is not there: its first steps are
#: un-preconditioned momentum SGD and its later steps rescale the Adam step by a rectification
#: factor, so ``auto`` gives the Hessian's sharpness.
ADAPTIVE = set(registry.preconditioned_names())


def build_optimizer(config: Mapping[str, Any], model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer over ``model``'s parameter groups at base learning rate ``lr``.

    Builders get ``config["optimizer"]`` plus ``"_seed"`` = the run's init seed (GI-Adam draws
    ``v0: random`` from it, so each ``seed`` gets its own random ``v_0``)."""
    options = dict(config["optimizer"], _seed=seeds(config["seed"])[0] % (2 ** 31))
    return OPTIMIZERS[config["optimizer"]["name"]](model, lr, options)


def _linear_warmup(schedule_cfg: Mapping[str, Any], lr_trgt: float, steps: int) -> Callable[[int], float]:
    from catapult import schedules

    decay = schedule_cfg["decay"]
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


def search_delta(config: Mapping[str, Any]) -> float:
    """``schedule.delta``, or the paper's default: 0.1 for SGD, 0.01 for Adam-family optimizers."""
    delta = config["schedule"]["delta"]
    if delta is not None:
        return float(delta)
    return 0.1 if config["optimizer"]["name"] == "sgd" else 0.01


def search_lr_start(config: Mapping[str, Any], lr_trgt: float) -> float:
    """``schedule.lr_start``, or ``min(1e-4, lr_trgt)``, capped at ``lr_trgt``."""
    start = config["schedule"]["lr_start"]
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


def build_warmup(config: Mapping[str, Any], lr_trgt: float, model: nn.Module, loss_fn, batch0,
                 optimizer: torch.optim.Optimizer) -> Warmup:
    """The config's warmup rule at ``lr_trgt``:

    * ``linear``: :func:`build_schedule`.
    * ``catapult``: ``lr_c = critical_lr(model, loss_fn, batch0, optimizer, lr_start,
      lr_max=lr_trgt, delta)`` at step 0 (forward passes only, nothing changed), then
      ``catapult_warmup(lr_trgt, warmup_steps, lr_c)`` with the config's decay:
      ``lr(t) = min(lr_trgt, lr_c + lr_trgt t / T_wrm)``.
    * ``persistent``: a ``PersistentCatapultWarmup(optimizer, model, loss_fn, lr_trgt, delta,
      lr_start)``; the schedule reads its current lr (the engine calls ``persistent.step`` at
      every step before the update, which may re-run the search).
    """
    from catapult import schedules
    from catapult.critical_lr import critical_lr

    sched, steps = config["schedule"], config["train"]["steps"]
    rule = sched["warmup"]
    if rule == "linear":
        return Warmup(build_schedule(config, lr_trgt))
    delta, lr_start = search_delta(config), search_lr_start(config, lr_trgt)
    if rule == "catapult":
        res = critical_lr(model, loss_fn, batch0, optimizer, lr_start=lr_start, lr_max=lr_trgt, delta=delta)
        decay = sched["decay"]
        fn = schedules.catapult_warmup(lr_trgt, sched["warmup_steps"], res.lr,
                                       decay=None if decay == "constant" else decay,
                                       total_steps=None if decay == "constant" else steps,
                                       lr_final=sched["lr_final"])
        return Warmup(fn, None, dict(lr_critical=res.lr, lr_critical_lower=res.lower,
                                     lr_critical_upper=res.upper, search_forward_passes=res.forward_passes))
    pcw = schedules.PersistentCatapultWarmup(optimizer, model, loss_fn, lr_trgt, delta, lr_start=lr_start)
    return Warmup(lambda t: pcw.lr if pcw.lr is not None else lr_start, pcw, {})


class BatchStream:
    """The deterministic sequence of training batches (see the module docstring).

    ``batch(t)`` must be called with ``t = 0, 1, 2, ...`` in order (or repeating the last ``t``).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int):
        self.x, self.y = x, y
        self.n = x.shape[0]
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        if batch_size is not None:
            if batch_size > self.n:
                raise cfg.ConfigError([("train.batch_size", f"{batch_size} exceeds the {self.n} training samples; "
                                        "use at most that, or null for full-batch GD")])
            self.per_epoch = self.n // batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None
        self._last: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None:
            return self.x, self.y
        if self._last is not None and self._last[0] == t:
            return self._last[1]
        epoch, b = divmod(t, self.per_epoch)
        while self._epoch < epoch:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._epoch += 1
        if epoch != self._epoch:
            raise ValueError("BatchStream.batch must be called with non-decreasing steps")
        idx = self._perm[b * self.batch_size:(b + 1) * self.batch_size].to(self.x.device)
        out = (self.x[idx], self.y[idx])
        self._last = (t, out)
        return out


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``(x, y)`` in eval mode, in chunks of ``chunk`` rows.

    Both losses are means over rows (MSE also over the equal-sized output dim), so chunk means
    are combined weighted by their row counts. The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        total_loss, total_correct, n = 0.0, 0.0, x.shape[0]
        for start in range(0, n, chunk):
            xb, yb = x[start:start + chunk], y[start:start + chunk]
            out = model(xb)
            total_loss += loss_fn(out, yb).item() * xb.shape[0]
            total_correct += accuracy(out, yb) * xb.shape[0]
        return total_loss / n, total_correct / n
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Files


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; inf/nan as "inf"/"nan" (pandas reads both)
    return str(value)


def write_metrics(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write rows as CSV with header :data:`METRIC_COLUMNS`; ``None`` -> empty cell."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(METRIC_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])


def read_metrics(path: str | Path) -> list[dict]:
    """Read a ``metrics.csv`` back: ints for ``step``/``sharpness_matvecs``, floats otherwise,
    ``None`` for empty cells (``pandas.read_csv`` reads the same file directly, with NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, text in raw.items():
                if text == "" or text is None:
                    row[key] = None
                elif key in _INT_COLUMNS:
                    row[key] = int(text)
                else:
                    row[key] = float(text)
            rows.append(row)
    return rows


class _MetricsFile:
    """Streams rows to ``metrics.csv`` as they are logged (a killed run keeps its rows)."""

    def __init__(self, path: Path):
        self.fh = open(path, "w", newline="")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(METRIC_COLUMNS)

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar on a terminal, plain lines (about 10 per run) otherwise, or nothing."""

    def __init__(self, mode: Any, total: int, name: str):
        if mode is None or mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        elif mode is True:
            mode = "bar"
        elif mode is False:
            mode = "none"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress must be None, 'auto', 'bar', 'lines', 'none' or a bool, got {mode!r}")
        self.mode, self.total, self.name = mode, total, name
        self.every = max(1, total // 10)
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True, leave=True)
        self.last_sharpness: float | None = None

    def update(self, row: Mapping[str, Any]) -> None:
        if row.get("sharpness") is not None:
            self.last_sharpness = row["sharpness"]
        t = row["step"]
        if self.mode == "bar":
            post = {"loss": f"{row['train_loss']:.3e}", "lr": f"{row['lr']:.2e}"}
            if self.last_sharpness is not None:
                post["sharp"] = f"{self.last_sharpness:.3g}"
            self.bar.set_postfix(post, refresh=False)
            if t > self.bar.n:
                self.bar.update(t - self.bar.n)
        elif self.mode == "lines" and (t % self.every == 0 or t == self.total):
            text = f"[{self.name}] step {t}/{self.total} loss {row['train_loss']:.4e} acc {row['train_accuracy']:.3f} lr {row['lr']:.3e}"
            if self.last_sharpness is not None:
                text += f" sharpness {self.last_sharpness:.4g} (threshold {row['threshold']:.4g})"
            if row.get("test_loss") is not None:
                text += f" test_loss {row['test_loss']:.4e} test_acc {row['test_accuracy']:.3f}"
            print(text, file=sys.stderr, flush=True)

    def close(self, status: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name} ({status})")
            self.bar.close()
        elif self.mode == "lines":
            print(f"[{self.name}] {status}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The engine


def solver_options(config: Mapping[str, Any]) -> dict:
    """Keyword arguments of :func:`catapult.sharpness` from a validated config's ``eval.sharpness_*``
    keys (tol, max_iter, hvp, dtype, max_basis, chunk_size)."""
    ev = config["eval"]
    return dict(tol=ev["sharpness_tol"], max_iter=ev["sharpness_max_iter"], hvp=ev["sharpness_hvp"],
                dtype=getattr(torch, ev["sharpness_dtype"]) if ev["sharpness_dtype"] else None,
                max_basis=ev["sharpness_max_basis"], chunk_size=ev["sharpness_chunk_size"])


def _sharpness_fn(config: Mapping[str, Any]):
    """Returns ``measure(model, loss_fn, batch, optimizer, init) -> EigenEstimate``."""
    from catapult import curvature

    ev = config["eval"]
    kwargs = solver_options(config)
    kind = ev["sharpness_kind"]
    if kind == "auto":
        kind = "preconditioned" if config["optimizer"]["name"] in ADAPTIVE else "hessian"

    def hessian(model, loss_fn, batch, optimizer, init):
        return curvature.sharpness(model, loss_fn, batch, init=init, **kwargs)

    def preconditioned(model, loss_fn, batch, optimizer, init):
        return curvature.preconditioned_sharpness(model, loss_fn, batch, optimizer, init=init,
                                                  scale_by_group_lr=True, **kwargs)

    return hessian, (preconditioned if kind == "preconditioned" else hessian), kind


def _threshold(optimizer: torch.optim.Optimizer, lr: float | None = None) -> float:
    """``instability_threshold`` at the first group's current lr (or ``lr``); ``inf`` at lr 0."""
    from catapult.curvature import instability_threshold

    current = optimizer.param_groups[0]["lr"] if lr is None else lr
    return float(instability_threshold(optimizer, lr=current)) if current > 0 else math.inf


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def run(config: Mapping[str, Any], *, out_dir: str | Path | None = None, progress: Any = None) -> RunResult:
    """Train the model ``config`` describes; see the module docstring for the exact step semantics.

    ``config`` is validated (and completed with defaults) first. With ``out_dir`` the run
    directory gets ``config.yaml`` (resolved), ``metrics.csv`` (streamed), ``summary.json`` and
    ``trajectories.png`` (loss and sharpness vs step, with the instability threshold); nothing
    is written if setup fails (bad config, missing data). ``progress``: ``None``/``"auto"`` (a
    bar on a terminal, plain lines otherwise), ``"bar"``, ``"lines"``, ``"none"`` or a bool.
    """
    config = cfg.validate(config)
    started = time.perf_counter()
    device = resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    init_seed, data_seed, sharpness_seed = seeds(config["seed"])
    train_cfg, eval_cfg = config["train"], config["eval"]
    steps = train_cfg["steps"]
    lr_spec = cfg.parse_lr(config["optimizer"]["lr"])

    # ---- setup: everything that can fail on bad input happens before any file is written
    data = load_data(config, device, dtype)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    batches = BatchStream(x_train, y_train, train_cfg["batch_size"], data_seed)
    model = build_model(config, data.in_features, data.num_classes, device, dtype)
    model.train()
    loss_fn = get_loss(config["loss"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    out_path = Path(out_dir) if out_dir is not None else None
    metrics_file = None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "config.yaml").write_text(cfg.dump_config(config))
        metrics_file = _MetricsFile(out_path / "metrics.csv")

    # ---- lambda_0 (needed for "c/lambda0" and as the first sharpness measurement)
    hessian_sharpness, measure_sharpness, sharpness_kind = _sharpness_fn(config)
    sharpness_every = eval_cfg["sharpness_every"]
    start_vector = torch.randn(n_params, generator=torch.Generator().manual_seed(sharpness_seed))
    start_vector = start_vector.to(device=device, dtype=dtype)
    lambda_0 = None
    matvecs_total, measurements, unconverged = 0, 0, 0
    warm: torch.Tensor | None = start_vector
    lambda0_estimate = None
    if sharpness_every > 0 or lr_spec.relative:
        lambda0_estimate = hessian_sharpness(model, loss_fn, batches.batch(0), None, start_vector)
        lambda_0 = float(lambda0_estimate.value)
        matvecs_total += int(lambda0_estimate.matvecs)
        unconverged += int(not lambda0_estimate.converged)
    try:
        lr_trgt = lr_spec.resolve(lambda_0)
    except ValueError as err:
        if metrics_file is not None:
            metrics_file.close()
        raise ValueError(f"optimizer.lr={config['optimizer']['lr']!r}: {err}") from None

    optimizer = build_optimizer(config, model, lr_trgt)
    warmup_rule = build_warmup(config, lr_trgt, model, loss_fn, batches.batch(0), optimizer)
    schedule, persistent = warmup_rule.schedule, warmup_rule.persistent
    from catapult import schedules

    scheduler = schedules.attach(optimizer, schedule)

    # ---- the loop
    test_every = eval_cfg["test_every"]
    divergence_factor = train_cfg["divergence_factor"]
    reporter = _Progress(progress, steps, config["name"])
    metrics: list[dict] = []
    status, diverged_at, loss_0 = "finished", None, None
    try:
        for t in range(steps + 1):
            final = t == steps
            x, y = batches.batch(t)
            lr_t = float(schedule(t))
            row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
            row.update(step=t, lr=lr_t, threshold=_threshold(optimizer))

            outputs = model(x)
            loss = loss_fn(outputs, y)
            row["train_loss"] = loss_t = float(loss.item())
            row["train_accuracy"] = accuracy(outputs, y)
            if t == 0:
                loss_0 = loss_t
            if not math.isfinite(loss_t) or (loss_0 > 0 and loss_t > divergence_factor * loss_0):
                status, diverged_at = "diverged", t
                metrics.append(row)
                if metrics_file is not None:
                    metrics_file.write(row)
                reporter.update(row)
                break

            if not final:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if persistent is not None:  # Alg. 3: this step's lr (may re-run the search)
                    row["lr"] = float(persistent.step((x, y), loss=loss_t))
                    row["threshold"] = _threshold(optimizer)
            del loss, outputs

            if sharpness_every > 0 and (t % sharpness_every == 0 or final):
                if t == 0 and sharpness_kind == "hessian" and lambda0_estimate is not None:
                    est = lambda0_estimate  # already counted
                else:
                    est = measure_sharpness(model, loss_fn, (x, y), optimizer, warm)
                    matvecs_total += int(est.matvecs)
                    unconverged += int(not est.converged)
                warm = est.vector
                row["sharpness"] = float(est.value)
                row["sharpness_matvecs"] = int(est.matvecs)
                measurements += 1

            if final or (test_every > 0 and t % test_every == 0):
                row["test_loss"], row["test_accuracy"] = evaluate(model, loss_fn, x_test, y_test)

            metrics.append(row)
            if metrics_file is not None:
                metrics_file.write(row)
            reporter.update(row)

            if not final:
                optimizer.step()
                scheduler.step()
    finally:
        reporter.close(status)
        if metrics_file is not None:
            metrics_file.close()

    summary = _summarize(
        config, metrics, status=status, diverged_at=diverged_at, lambda_0=lambda_0, lr_trgt=lr_trgt,
        threshold_target=_threshold(optimizer, lr_trgt * optimizer.param_groups[0].get("lr_mult", 1.0)),
        n_params=n_params, device=device, sharpness_kind=sharpness_kind, matvecs_total=matvecs_total,
        measurements=measurements, unconverged=unconverged, wall_time=time.perf_counter() - started,
    )
    summary.update(_warmup_summary(config, metrics, lr_trgt, warmup_rule))
    if out_path is not None:
        (out_path / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
        from catapult.plots import plot_run

        plot_run(metrics, out_path / "trajectories.png", title=config["name"], status=status,
                 threshold_label=threshold_label(config, sharpness_kind),
                 preconditioned=sharpness_kind == "preconditioned")
    return RunResult(status=status, metrics=metrics, summary=summary, config=config, model=model, out_dir=out_path)


def _warmup_summary(config, metrics, lr_trgt: float, warmup_rule: Warmup) -> dict:
    """Warmup scalars: ``warmup`` (the rule), ``lr_target_reached_at`` (first logged step whose
    lr is ``lr_trgt`` to 1e-9 relative; None if never), ``lr_critical`` / ``_lower`` / ``_upper``
    (catapult: the step-0 search; persistent: the first search), ``search_forward_passes``
    (forward passes of all searches and loss probes; 0 for linear) and ``searches``."""
    reached = next((r["step"] for r in metrics if r["lr"] is not None and r["lr"] >= lr_trgt * (1 - 1e-9)), None)
    out = dict(warmup=config["schedule"]["warmup"], lr_target_reached_at=reached, lr_critical=None,
               lr_critical_lower=None, lr_critical_upper=None, search_forward_passes=0, searches=0)
    out.update(warmup_rule.info)
    if warmup_rule.info:
        out["searches"] = 1
    pcw = warmup_rule.persistent
    if pcw is not None:
        out["searches"] = pcw.searches
        out["search_forward_passes"] = pcw.forward_passes
        if pcw.history:
            first = pcw.history[0]
            out.update(lr_critical=first["upper"], lr_critical_lower=first["lower"],
                       lr_critical_upper=first["upper"])
    return out


def threshold_label(config: Mapping[str, Any], sharpness_kind: str) -> str:
    """How the instability threshold of the config's optimizer reads in a figure legend."""
    if sharpness_kind == "preconditioned":
        b1 = float(config["optimizer"]["betas"][0])
        return f"(2+2b1)/((1-b1) lr_t) = {(2 + 2 * b1) / (1 - b1):.3g}/lr_t"
    if config["optimizer"]["name"] != "sgd":  # Adam-family rule, drawn beside the Hessian's sharpness
        return "(2+2b1)/((1-b1) lr_t), the Adam rule (for the pre-conditioned sharpness)"
    if config["optimizer"]["name"] == "sgd" and config["optimizer"]["momentum"] > 0:
        return "(2+2b)/lr_t"
    return "2/lr_t"


def _summarize(config, metrics, *, status, diverged_at, lambda_0, lr_trgt, threshold_target, n_params, device,
               sharpness_kind,
               matvecs_total, measurements, unconverged, wall_time) -> dict:
    """The run's scalars (``summary.json``). Non-finite numbers become ``null`` in the file."""
    from catapult.analysis import detect_catapults

    losses = [r["train_loss"] for r in metrics if _finite(r["train_loss"])]
    sharp = [(r["step"], r["sharpness"]) for r in metrics if r["sharpness"] is not None]
    tests = [r for r in metrics if r["test_loss"] is not None]
    last = metrics[-1] if metrics else {}
    events = detect_catapults(metrics)
    return {
        "name": config["name"],
        "status": status,
        "diverged_at": diverged_at,
        "steps": config["train"]["steps"],
        "steps_completed": (diverged_at if diverged_at is not None else config["train"]["steps"]),
        "lr": config["optimizer"]["lr"],
        "lr_target": lr_trgt,
        "lambda_0": lambda_0,
        "lr_target_times_lambda_0": lr_trgt * lambda_0 if lambda_0 else None,
        "threshold_target": threshold_target,
        "initial_train_loss": losses[0] if losses else None,
        "final_train_loss": last.get("train_loss"),
        "peak_train_loss": max(losses) if losses else None,
        "min_train_loss": min(losses) if losses else None,
        "final_train_accuracy": last.get("train_accuracy"),
        "final_test_loss": tests[-1]["test_loss"] if tests else None,
        "final_test_accuracy": tests[-1]["test_accuracy"] if tests else None,
        "best_test_accuracy": max(r["test_accuracy"] for r in tests) if tests else None,
        "sharpness_kind": sharpness_kind,
        "final_sharpness": sharp[-1][1] if sharp else None,
        "peak_sharpness": max(v for _, v in sharp) if sharp else None,
        "catapult": bool(events),
        "catapults": [e.as_dict() for e in events],
        "sharpness_measurements": measurements,
        "sharpness_matvecs": matvecs_total,
        "sharpness_unconverged": unconverged,
        "num_params": n_params,
        "device": str(device),
        "dtype": config["dtype"],
        "wall_time_s": wall_time,
    }


# --------------------------------------------------------------------------------------------
# Command line: `catapult train CONFIG [key=value ...] [--out DIR] [--device DEVICE]`


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    from catapult.cli import add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="train one run from a YAML config",
        description="Train one run from a YAML config. Writes runs/<name>/ (or --out DIR): "
                    "config.yaml (resolved), metrics.csv, summary.json, trajectories.png.",
    )
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    p.set_defaults(func=_train_command)


def _train_command(args) -> int:
    from catapult.cli import config_from_args

    config = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / config["name"]
    result = run(config, out_dir=out, progress=args.progress)
    print(format_summary(result.summary))
    print(f"wrote {out}/ (config.yaml, metrics.csv, summary.json, trajectories.png)")
    return 0


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few human-readable lines about a run."""

    def fmt(x, spec=".4g"):
        return "-" if x is None else format(x, spec)

    lines = [
        f"{summary['name']}: {summary['status']}"
        + (f" at step {summary['diverged_at']}" if summary["diverged_at"] is not None else "")
        + f" after {summary['steps_completed']} steps ({summary['wall_time_s']:.1f} s)",
        f"  lambda_0 {fmt(summary['lambda_0'])}  lr_trgt {fmt(summary['lr_target'])}"
        f"  (lr_trgt * lambda_0 = {fmt(summary['lr_target_times_lambda_0'], '.3g')})",
        f"  train loss: initial {fmt(summary['initial_train_loss'])}  peak {fmt(summary['peak_train_loss'])}"
        f"  final {fmt(summary['final_train_loss'])}",
        f"  test: loss {fmt(summary['final_test_loss'])}  accuracy {fmt(summary['final_test_accuracy'], '.4f')}",
    ]
    if summary.get("warmup") in ("catapult", "persistent"):
        lines.append(f"  {summary['warmup']} warmup: lr_c {fmt(summary['lr_critical'])}  lr_trgt reached at step "
                     f"{fmt(summary['lr_target_reached_at'], 'd')}  searches {summary['searches']} "
                     f"({summary['search_forward_passes']} forward passes)")
    if summary["sharpness_measurements"]:
        lines.append(f"  sharpness: final {fmt(summary['final_sharpness'])}  threshold at lr_trgt "
                     f"{fmt(summary['threshold_target'])}  catapult: {'yes' if summary['catapult'] else 'no'}")
    return "\n".join(lines)
