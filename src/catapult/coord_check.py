"""Coordinate check: does each block's activation scale stay put as width or density changes?

For every parameter value ``v`` (a width for muP, a density for SμPar) and seed, build
``make_model(v)`` under ``torch.manual_seed(seed)``, train it for ``steps`` steps on the given
batch(es), and record with forward hooks the mean absolute value of each block's output,

    mean_abs = mean_{batch, positions, features} |block(x)|,

during the forward pass of every step ``t = 0 .. steps-1`` (``t = 0`` is the model at init,
step ``t`` sees the model after ``t`` updates; a module applied more than once in a forward
pass is averaged over all its outputs). A correct parameterization gives curves that are
flat in ``v`` on log-log axes; SP (and muP over density) shrink or grow by orders of magnitude.

Blocks are found by the module attribute ``catapult_block`` (set by :class:`catapult.models.GPT`:
``embedding``, ``attention``, ``mlp``, ``logits``; by :class:`catapult.models.MLP` and
:class:`catapult.models.WRN`: ``input``, ``hidden``, ``logits``, the WRN's for every conv),
else by ``catapult_role`` (from :func:`catapult.parametrize`; the output role is reported as
``logits``), or given explicitly as ``{module_name: block}``.
Rows keep each module separately (``module``); plots and :func:`coord_slopes` average modules
of the same block and the seeds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.arguments import MAX_STEPS, check_batch, check_integer, check_real, check_seed
from catapult.parametrize import param_groups
from catapult.files import save_figure
from catapult.losses import IGNORE_INDEX, cross_entropy, label_range_error, mse

__all__ = ["coord_check", "coord_slopes", "unfit_values", "activation_table", "block_order", "plot_coord_check",
           "find_blocks", "default_loss", "BLOCK_ORDER"]

#: Forward order of the blocks (tables and figures list them so; unknown names go last).
BLOCK_ORDER = ("embedding", "input", "attention", "hidden", "mlp", "output", "logits")

Batch = tuple[torch.Tensor, torch.Tensor]


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension (works for (N, C) and (B, T, V) outputs)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def find_blocks(model: nn.Module,
                blocks: Mapping[str, str] | None = None) -> dict[str, tuple[nn.Module, str]]:
    """``{module_name: (module, block)}`` to hook (see the module docstring for the rules)."""
    modules = dict(model.named_modules())
    if blocks is not None:
        missing = [name for name in blocks if name not in modules]
        if missing:
            raise ValueError(f"coord_check blocks: no module named {missing} in the model")
        return {name: (modules[name], block) for name, block in blocks.items()}
    found = {name: (module, module.catapult_block) for name, module in modules.items()
             if getattr(module, "catapult_block", None)}
    if not found:
        found = {name: (module, "logits" if module.catapult_role == "output"
                        else module.catapult_role)
                 for name, module in modules.items() if getattr(module, "catapult_role", None)}
    if not found:
        raise ValueError("coord_check: the model has no module with a catapult_block or "
                         "catapult_role attribute; pass blocks={module_name: block_name}")
    return found


#: The optimizers ``coord_check`` builds by name (checked before the first model is built).
_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


#: ``lr`` of a named optimizer when none is given.
_DEFAULT_LR = 1e-2


def _make_optimizer(model: nn.Module, lr: float | None, optimizer) -> torch.optim.Optimizer:
    if callable(optimizer):  # its own learning rates (coord_check refused an lr beside it)
        opt = optimizer(model)
        if not (callable(getattr(opt, "step", None)) and callable(getattr(opt, "zero_grad", None))):
            raise TypeError(f"coord_check optimizer: the factory {optimizer!r} returned {opt!r}, not an "
                            "optimizer (an object with step() and zero_grad(), e.g. a torch.optim.Optimizer)")
        return opt
    name = optimizer.lower()   # one of _OPTIMIZERS: coord_check checked it
    lr = _DEFAULT_LR if lr is None else lr
    return _OPTIMIZERS[name](param_groups(model, lr, optimizer=name), lr=lr)


def coord_check(
    make_model: Callable[[float], nn.Module],
    values: Iterable[float],
    *,
    batch: Batch | Callable[[int], Batch],
    steps: int = 10,
    seeds: Sequence[int] = (0, 1, 2),
    lr: float | None = None,
    optimizer: str | Callable[[nn.Module], torch.optim.Optimizer] = "adam",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    blocks: Mapping[str, str] | None = None,
    device: torch.device | str | None = None,
) -> list[dict]:
    """Run the coordinate check; returns one row per (value, seed, step, module).

    Each row is ``{"value", "seed", "step", "block", "module", "mean_abs", "loss"}``.

    Args:
        make_model: ``value -> model`` (called under ``torch.manual_seed(seed)``).
        values: the widths or densities to compare.
        batch: ``(inputs, targets)`` used at every step, or ``step -> (inputs, targets)``.
        steps: number of training steps recorded (forward passes ``t = 0 .. steps-1``).
        seeds: one run per seed and value.
        lr, optimizer: ``"sgd" | "adam" | "adamw"`` at ``lr`` (default 1e-2) with
            :func:`catapult.param_groups` (so each model's own per-layer learning rates
            apply); or a factory ``model -> optimizer``, which sets its own learning rates:
            ``lr`` is then refused (a ValueError), since it could not reach the optimizer.
        loss_fn: ``(outputs, targets) -> scalar``; default :func:`default_loss`.
        blocks: ``{module_name: block}`` to override :func:`find_blocks`.
        device: where to run (default: CPU / the model's device).

    A run whose loss becomes non-finite keeps going; its rows carry the non-finite values.
    """
    steps = check_integer("coord_check", "steps", steps, high=MAX_STEPS)
    values = list(values)
    if not values:
        raise ValueError("coord_check values is empty: give the widths or densities to compare")
    for value in values:  # each row keeps float(value), and the slopes its log
        check_real("coord_check", "values", value, low=0.0, low_open=True)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):  # "01" ran seeds 0 and 1
        raise ValueError(f"coord_check seeds must be a list of integer seeds; got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"coord_check seeds must be a non-empty list of integer seeds; got {seeds!r}")
    # each a seed torch.manual_seed takes (its overflow came mid-study)
    seeds = [check_seed("coord_check", f"seeds[{i}]", s, optional=False) for i, s in enumerate(seeds)]
    if not callable(batch):
        check_batch("coord_check", batch)
    # checked before the first model is built: 'lion' was param_groups' refusal, listing gi-adam and
    # radam, which coord_check then refused too; blocks=['0'] raised "'list' object has no attribute 'items'"
    if not callable(optimizer):
        if not isinstance(optimizer, str) or optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"coord_check optimizer must be {', '.join(map(repr, _OPTIMIZERS))} or a callable "
                             f"model -> optimizer; got {optimizer!r}")
        if lr is not None:
            check_real("coord_check", "lr", lr, low=0.0)
    elif lr is not None:  # it was ignored: the factory's own learning rate ran
        raise ValueError(f"coord_check lr={lr!r} with an optimizer factory: the factory {optimizer!r} builds the "
                         "optimizer and sets its learning rates, so lr would not reach it; set the learning "
                         "rate inside the factory and leave lr out")
    if blocks is not None and not isinstance(blocks, Mapping):
        raise TypeError(f"coord_check blocks must be a mapping {{module name: block name}}; got {type(blocks).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"coord_check loss_fn must be a callable (outputs, targets) -> loss; got {loss_fn!r}")
    device = _checked_device(device)
    loss_fn = loss_fn or default_loss
    # class labels indexed by a loss whose meaning is known: checked against the outputs' width on
    # the first run's batches (the later runs take the same ones), before that loss indexes with them
    # (a label >= width was a CUDA device-side assert, or torch's IndexError traceback on the CPU)
    labelled = {default_loss: IGNORE_INDEX, cross_entropy: IGNORE_INDEX, mse: None}
    unchecked = set(range(steps)) if loss_fn in labelled else set()
    rows: list[dict] = []
    # under fork_rng: the caller's RNG state is restored afterwards (it was left at the last
    # seed's plus the training's dropout draws, so a user's later random draws changed)
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        for value in values:
            for seed in seeds:
                torch.manual_seed(seed)
                model = make_model(value)
                if device is not None:
                    model = model.to(device)
                model.train()
                opt = _make_optimizer(model, lr, optimizer)
                hooked = find_blocks(model, blocks)
                current: dict[str, list[tuple[float, int]]] = {}   # (mean |out|, count) per call

                def record(name: str):
                    def hook(module, inputs, output):
                        out = (output[0] if isinstance(output, (tuple, list)) else output).detach()
                        # a module applied more than once (shared weights) counts every call's output
                        current.setdefault(name, []).append((out.abs().float().mean().item(), out.numel()))
                    return hook

                handles = [module.register_forward_hook(record(name))
                           for name, (module, _) in hooked.items()]
                try:
                    for step in range(steps):
                        inputs, targets = batch(step) if callable(batch) else batch
                        if device is not None:
                            inputs, targets = inputs.to(device), targets.to(device)
                        current.clear()
                        outputs = model(inputs)
                        if step in unchecked:
                            unchecked.discard(step)
                            _check_labels(outputs, targets, labelled[loss_fn], step)
                        loss = loss_fn(outputs, targets)
                        for name, (_, block) in hooked.items():
                            rows.append({"value": float(value), "seed": int(seed), "step": step,
                                         "block": block, "module": name,
                                         "mean_abs": _pooled_mean(current.get(name, [])),
                                         "loss": float(loss.detach())})
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                finally:
                    for handle in handles:
                        handle.remove()
    return rows


def _check_labels(outputs, targets, ignore_index: int | None, step: int) -> None:
    """A ValueError naming the label, the class count and the step where integer ``targets``
    reach past ``outputs``' last dimension."""
    if torch.is_tensor(targets) and torch.is_tensor(outputs) and outputs.dim() and not (
            targets.is_floating_point() or targets.is_complex()):
        problem = label_range_error(f"coord_check batch (step {step})", targets, outputs.shape[-1],
                                    ignore_index=ignore_index)
        if problem is not None:
            raise problem


def _pooled_mean(calls: list[tuple[float, int]]) -> float:
    """The mean over all outputs of a module's calls from their ``(mean, count)``; NaN for none."""
    if len(calls) == 1:
        return calls[0][0]
    count = sum(n for _, n in calls)
    return sum(m * n for m, n in calls) / count if count else float("nan")


def _checked_device(device) -> torch.device | None:
    """``device`` as a torch device, or a ValueError naming it before any run (a missing CUDA
    was torch's AssertionError from the first ``model.to``)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"coord_check device: expected a torch device such as 'cpu' or 'cuda'; "
                         f"got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"coord_check device: {str(device)!r} requested but CUDA is not available; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"coord_check device: {str(device)!r} requested but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def _cuda_devices(device) -> list[int]:
    """The CUDA devices whose RNG a coord check on ``device`` may draw from (none on the CPU)."""
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return []
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


def _averaged(rows: Iterable[dict]) -> dict[tuple[str, int], dict[float, list[float]]]:
    """``{(block, step): {value: [per-seed means over the block's modules]}}``."""
    per_seed: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        per_seed[(row["block"], row["step"], row["value"], row["seed"])].append(row["mean_abs"])
    table: dict[tuple[str, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (block, step, value, _), means in per_seed.items():
        table[(block, step)][value].append(sum(means) / len(means))
    return table


def coord_slopes(rows: Iterable[dict]) -> dict[tuple[str, int], float]:
    """Least-squares slope of ``log mean_abs`` vs ``log value`` per ``(block, step)``.

    ``mean_abs`` is averaged over the block's modules and the seeds first. 0 = flat (what a
    correct parameterization shows); SP over density shows clearly positive slopes. A
    ``(block, step)`` whose mean at some value is not a finite number > 0 (a run that diverged:
    inf or nan; a block whose output is all 0, e.g. a dead ReLU layer) has slope NaN, as has one
    with fewer than two values: fitted over the other values, the most unflat point was left out
    and the slope could read flat. :func:`unfit_values` names those values.

    Example:
        >>> rows = [{"block": "mlp", "step": 0, "value": v, "seed": 0, "mean_abs": a}
        ...         for v, a in ((64, 1.0), (256, 0.5))]
        >>> round(coord_slopes(rows)[("mlp", 0)], 12)     # mean |out| halves per 4x width
        -0.5
        >>> coord_slopes(rows + [{"block": "mlp", "step": 0, "value": 1024, "seed": 0, "mean_abs": float("inf")}])
        {('mlp', 0): nan}
    """
    slopes = {}
    for key, by_value in _averaged(rows).items():
        means = {v: sum(m) / len(m) for v, m in by_value.items()}
        if not all(math.isfinite(mean) and mean > 0 for mean in means.values()):
            slopes[key] = float("nan")
            continue
        points = [(math.log(v), math.log(mean)) for v, mean in means.items() if v > 0]
        if len(points) < 2:
            slopes[key] = float("nan")
            continue
        mx = sum(p[0] for p in points) / len(points)
        my = sum(p[1] for p in points) / len(points)
        sxx = sum((p[0] - mx) ** 2 for p in points)
        sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
        slopes[key] = sxy / sxx if sxx > 0 else float("nan")
    return slopes


def unfit_values(rows: Iterable[dict]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """``{(block, step): [(value, mean), ...]}``: the values whose mean |activation| (over the
    block's modules and the seeds) is not a finite number > 0, which leave that slope of
    :func:`coord_slopes` NaN; ``(block, step)`` pairs without any are left out.

    Example:
        >>> rows = [{"block": "hidden", "step": 0, "value": v, "seed": 0, "mean_abs": a}
        ...         for v, a in ((1, 0.0), (2, 0.3), (4, 0.3))]
        >>> unfit_values(rows)
        {('hidden', 0): [(1, 0.0)]}
    """
    out: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for key, by_value in _averaged(rows).items():
        bad = [(v, sum(m) / len(m)) for v, m in sorted(by_value.items())]
        bad = [(v, mean) for v, mean in bad if not (math.isfinite(mean) and mean > 0)]
        if bad:
            out[key] = bad
    return out


def block_order(blocks: Iterable[str]) -> list[str]:
    """The distinct ``blocks`` in :data:`BLOCK_ORDER` (embedding ... logits), unknown names last."""
    rank = {b: i for i, b in enumerate(BLOCK_ORDER)}
    return sorted(dict.fromkeys(blocks), key=lambda b: (rank.get(b, len(rank)), b))


def activation_table(rows: Iterable[dict]) -> str:
    """Markdown: mean |activation| (over seeds and the block's modules) per value, one row per
    block at the first and the last recorded step."""
    table = _averaged(rows)
    steps = sorted({step for _, step in table})
    values = sorted({v for by in table.values() for v in by})
    lines = ["| block | step | " + " | ".join(f"{v:g}" for v in values) + " |",
             "|---|---|" + "---|" * len(values)]
    for block in block_order(b for b, _ in table):
        for step in dict.fromkeys((steps[0], steps[-1])):
            by = table.get((block, step), {})
            cells = [f"{sum(by[v]) / len(by[v]):.3g}" if v in by else "" for v in values]
            lines.append(f"| {block} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_coord_check(rows: Sequence[dict], path=None, *, panels: str = "block",
                     xlabel: str = "width", title: str | None = None):
    """Log-log plot of mean |activation| vs value; returns the matplotlib ``Figure``.

    ``panels="block"``: one panel per block, one line per step (darker = later);
    ``panels="step"``: one panel per step, one line per block. Lines are the seed mean, the
    band spans the seeds' min..max. Saved to ``path`` when given (no display needed: the
    figure is drawn with the Agg canvas, never through pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib as mpl

    if panels not in ("block", "step"):
        raise ValueError(f"panels must be 'block' or 'step'; got {panels!r}")
    table = _averaged(rows)
    if not table:
        raise ValueError("plot_coord_check: no rows to plot")
    blocks = block_order(key[0] for key in table)
    steps = sorted({key[1] for key in table})
    panel_keys = blocks if panels == "block" else steps
    line_keys = steps if panels == "block" else blocks
    ncols = min(4, len(panel_keys))
    nrows = math.ceil(len(panel_keys) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), constrained_layout=True)
    FigureCanvasAgg(fig)
    cmap = mpl.colormaps["viridis"]
    for index, panel in enumerate(panel_keys):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        for j, line in enumerate(line_keys):
            key = (panel, line) if panels == "block" else (line, panel)
            if key not in table:
                continue
            values = sorted(table[key])
            means = [sum(table[key][v]) / len(table[key][v]) for v in values]
            color = cmap(j / max(1, len(line_keys) - 1))
            label = f"step {line}" if panels == "block" else str(line)
            ax.plot(values, means, marker="o", ms=3, color=color, label=label)
            lows = [min(table[key][v]) for v in values]
            highs = [max(table[key][v]) for v in values]
            ax.fill_between(values, lows, highs, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(str(panel) if panels == "block" else f"step {panel}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean |activation|")
        if index == 0:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig
