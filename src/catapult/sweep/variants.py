"""What a sweep cell runs where its grid changes a key that decides which other keys apply.

A single run that sets an option its variant never reads is refused (``optimizer.momentum`` under
adam, ``schedule.lr_init`` under the catapult warmup, rigl at ``model.density: 1``): it would be
silently ignored. A grid that sweeps the deciding key (``optimizer.name: [sgd, adam]``) means the
option for the cells that read it, and there is no way to write it for some cells only; so each
other cell runs without it, and its stored config says so (the option at its default, or
``model.sparsity.method: static`` for a density axis's dense reference). :func:`cell_mapping`
builds a cell that way; :func:`grid_notes` says which cells ran without what.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable, Mapping, Union

from catapult import config as cfg
from catapult.sweep.dotted import get_dotted, set_dotted

__all__ = ["VARIANT_OPTIONS", "SweepNote", "cell_mapping", "dense_reference", "grid_notes", "swept_key_hint"]


class SweepNote(UserWarning):
    """What a grid runs otherwise than its base config reads (:func:`grid_notes`): cells that run
    without an option their variant does not read, a spectrum block capped at k, the dense model
    at a density of 1. ``catapult sweep`` prints these as notes; from Python,
    :func:`catapult.sweep.expand` and :func:`catapult.sweep.run_sweep` issue each as a warning of
    this class (``warnings.simplefilter("ignore", SweepNote)`` silences them,
    ``warnings.catch_warnings(record=True)`` collects them), and ``SweepOutcome.notes`` lists them.

    >>> import warnings
    >>> from catapult.sweep import SweepSpec, expand, parse_sweep
    >>> base = cfg.validate({"optimizer": {"name": "sgd", "momentum": 0.9}, "train": {"steps": 2}})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     cells = expand(base, parse_sweep({"grid": {"optimizer.name": ["sgd", "adam"]}}))
    >>> [w.category.__name__ for w in caught], str(caught[0].message).split(":")[0]
    (['SweepNote'], 'optimizer.momentum (0.9) is read by optimizer.name sgd only')
    """

_ADAM_FAMILY = ("adam", "adamw", "radam", "gi-adam")

Readers = Union[tuple, Callable[[Any], bool]]

#: ``(deciding key, option, the deciding key's values that read the option)`` (or a test of the
#: value): a cell whose deciding key the grid sets to another value runs with the option at its
#: default, where the grid does not sweep the option itself (then two cells would be the same
#: run). In order: the persistent warmup's constant decay comes before the decay's ``lr_final``.
VARIANT_OPTIONS: tuple[tuple[str, str, Readers], ...] = (
    ("optimizer.name", "optimizer.momentum", ("sgd",)),
    ("optimizer.name", "optimizer.betas", _ADAM_FAMILY),
    ("optimizer.name", "optimizer.eps", _ADAM_FAMILY),
    ("optimizer.name", "optimizer.v0", ("gi-adam",)),
    ("optimizer.name", "optimizer.v_bias_correction", ("gi-adam",)),
    ("schedule.warmup", "schedule.lr_init", ("linear",)),
    ("schedule.warmup", "schedule.power", ("linear",)),
    ("schedule.warmup", "schedule.decay", ("linear", "catapult")),  # persistent keeps lr_trgt
    ("schedule.warmup", "schedule.lr_final", ("linear", "catapult")),
    ("schedule.decay", "schedule.lr_final", ("cosine", "linear")),
    # (config.checks.SPARSITY_OPTIONS: what each method reads)
    ("model.sparsity.method", "model.sparsity.update_every", ("rigl", "gmp")),
    ("model.sparsity.method", "model.sparsity.end_fraction", ("rigl", "gmp")),
    ("model.sparsity.method", "model.sparsity.drop_fraction", ("rigl",)),
    ("model.sparsity.method", "model.sparsity.start_fraction", ("gmp",)),
    ("model.sparsity.method", "model.sparsity.supar_density", ("gmp",)),
    ("model.parametrization", "model.sparsity.supar_density", ("supar", "supar_init", "supar_lr")),
    ("data.name", "data.root", ("cifar10", "cifar100", "text")),  # digits and shakespeare are embedded
    ("data.tokenizer", "data.vocab_size", ("bpe", "none")),
    ("data.tokenizer", "data.cache_dir", ("bpe",)),
    ("eval.spectrum_top_k", "eval.spectrum_block_size", lambda k: k >= 1),
    # the spectrum and the trace are taken on the sharpness cadence: none at sharpness_every 0
    ("eval.sharpness_every", "eval.spectrum_top_k", lambda every: every >= 1),
    ("eval.sharpness_every", "eval.spectrum_block_size", lambda every: every >= 1),
    ("eval.sharpness_every", "eval.trace_matvecs", lambda every: every >= 1),
    # augmentation is for minibatch training: full-batch GD (batch_size null) trains on the fixed data
    ("train.batch_size", "data.augment.flip", lambda size: size is not None),
    ("train.batch_size", "data.augment.crop", lambda size: size is not None),
    ("train.batch_size", "data.augment.mixup", lambda size: size is not None),
)

#: What :func:`_normalized` gives for a value its key refuses (``None`` is a value: full batch).
_INVALID = object()


def _reads(readers: Readers, value: Any) -> bool:
    """Whether a deciding key's normalized ``value`` reads the option (an invalid value is left
    to the cell's own validation, as one that does)."""
    if value is _INVALID:
        return True
    return bool(readers(value)) if callable(readers) else value in readers


def _written(value: Any) -> str:
    """``value`` as YAML writes it (``null``, ``true``)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _readers_text(readers: Readers, decider: str) -> str:
    if not callable(readers):
        return ", ".join(readers)
    return "not null (minibatch training)" if decider == "train.batch_size" else "values >= 1"


def _normalized(key: str, value: Any) -> Any:
    """``value`` as the config reads it at ``key``; :data:`_INVALID` where it does not (the cell's
    own validation names that)."""
    try:
        return cfg.get(key).validate(value)
    except (ValueError, KeyError, TypeError):
        return _INVALID


def dense_reference(mapping: Mapping[str, Any], swept: Mapping[str, Any]) -> str | None:
    """The dynamic-sparsity method (``"rigl"`` or ``"gmp"``) of a cell that a ``model.density``
    axis puts at density 1 (``None`` for any other cell): the dense reference of a density grid.

    A dense model has no mask for rigl or gmp to change, so :func:`cell_mapping` runs such a cell
    as the dense model: its config says ``model.sparsity.method: static`` (at density 1, no
    masks), and its swept value of ``model.sparsity.method``, where that key is swept too, stays
    the grid's (``--where model.sparsity.method=rigl`` selects it with the sparse cells). A single
    run, or a sweep whose density is not swept, at density 1 with rigl or gmp is still refused:
    every such run would be dense under a method that never acts.

    >>> dense_reference({"model": {"density": 1, "sparsity": {"method": "rigl"}}}, {"model.density": 1})
    'rigl'
    >>> dense_reference({"model": {"density": 0.5, "sparsity": {"method": "rigl"}}}, {"model.density": 0.5})
    """
    if "model.density" not in swept:
        return None
    try:
        method = _normalized("model.sparsity.method", get_dotted(mapping, "model.sparsity.method"))
    except (KeyError, TypeError):
        return None
    density = _normalized("model.density", swept["model.density"])
    return method if density == 1.0 and method in ("rigl", "gmp") else None


def _capped_block(mapping: Mapping[str, Any], swept: Mapping[str, Any]) -> int | None:
    """The ``eval.spectrum_block_size`` of a cell whose swept ``eval.spectrum_top_k`` is below the
    base's block (the block capped at ``k``, which finds as many copies), else None."""
    if "eval.spectrum_top_k" not in swept or "eval.spectrum_block_size" in swept:
        return None
    k = _normalized("eval.spectrum_top_k", swept["eval.spectrum_top_k"])
    ev = mapping.get("eval")
    block = ev.get("spectrum_block_size") if isinstance(ev, dict) else None
    if isinstance(k, int) and isinstance(block, int) and 1 <= k < block:
        return k
    return None


def cell_mapping(base: Mapping[str, Any], swept: Mapping[str, Any]) -> tuple[dict, str | None]:
    """The config mapping of the cell of ``base`` at the ``swept`` values (dotted key -> value),
    with the :data:`VARIANT_OPTIONS` its swept variant does not read at their defaults, and
    :func:`dense_reference`'s method where the cell is a density axis's dense reference (its
    method is then static).

    >>> base = {"optimizer": {"name": "adam", "betas": [0.9, 0.95]}}
    >>> cell_mapping(base, {"optimizer.name": "sgd"})[0]["optimizer"]
    {'name': 'sgd', 'betas': [0.9, 0.999]}
    >>> cell_mapping(base, {"optimizer.name": "adamw"})[0]["optimizer"]
    {'name': 'adamw', 'betas': [0.9, 0.95]}
    """
    mapping = copy.deepcopy(dict(base))
    for key, value in swept.items():
        set_dotted(mapping, key, copy.deepcopy(value))
    for decider, option, readers in VARIANT_OPTIONS:
        if decider in swept and option not in swept and not _reads(readers, _normalized(decider, swept[decider])):
            *sections, leaf = option.split(".")
            node: Any = mapping
            for part in sections:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:  # else at its default already
                node[leaf] = copy.deepcopy(cfg.get(option).default)
    block = _capped_block(mapping, swept)
    if block is not None:  # a block of k already finds k copies of an eigenvalue
        mapping["eval"]["spectrum_block_size"] = block
    dense = dense_reference(mapping, swept)
    if dense is not None:  # the density axis's dense reference: no mask to change
        set_dotted(mapping, "model.sparsity.method", "static")
        sparsity = mapping["model"]["sparsity"]
        for leaf in [leaf for leaf in sparsity if leaf != "method" and f"model.sparsity.{leaf}" not in swept]:
            sparsity[leaf] = copy.deepcopy(cfg.get(f"model.sparsity.{leaf}").default)  # static reads none
    return mapping, dense


def _base_value(base: Mapping[str, Any], key: str) -> Any:
    """``key``'s value in ``base``, or its default where ``base`` (a mapping not yet validated,
    as :func:`catapult.sweep.run_sweep` accepts) leaves it out."""
    try:
        return get_dotted(base, key)
    except (KeyError, TypeError):
        return cfg.get(key).default


def grid_notes(base: Mapping[str, Any], axes: Mapping[str, tuple]) -> list[str]:
    """One line per option that some cells of a grid run without (:func:`cell_mapping`): the
    option ``base`` sets (keys it leaves out are at their defaults), the swept values that do not
    read it. ``axes``: swept key -> its values.

    >>> base = cfg.validate({"optimizer": {"name": "sgd", "momentum": 0.9}})
    >>> note, = grid_notes(base, {"optimizer.name": ("sgd", "adam")})
    >>> note.split(": ")[0]
    'optimizer.momentum (0.9) is read by optimizer.name sgd only'
    >>> note.split(": ")[1]
    'the cells with optimizer.name adam run without it (their stored config has its default, 0.0)'
    """
    notes = []
    for decider, option, readers in VARIANT_OPTIONS:
        default = cfg.get(option).default
        if decider not in axes or option in axes or _base_value(base, option) == default:
            continue
        others = [_written(v) for v in axes[decider] if not _reads(readers, _normalized(decider, v))]
        if others:
            notes.append(f"{option} ({_written(_base_value(base, option))}) is read by {decider} "
                         f"{_readers_text(readers, decider)} only: the cells with {decider} {', '.join(others)} "
                         f"run without it (their stored config has its default, {_written(default)})")
    block = _base_value(base, "eval.spectrum_block_size")
    if "eval.spectrum_top_k" in axes and "eval.spectrum_block_size" not in axes:
        small = [_written(k) for k in axes["eval.spectrum_top_k"]
                 if _capped_block(base, {"eval.spectrum_top_k": k}) is not None]
        if small:
            notes.append(f"eval.spectrum_block_size ({block}) is at most eval.spectrum_top_k: the cells with "
                         f"eval.spectrum_top_k {', '.join(small)} run with a block of their k (as many copies found)")
    if "model.density" in axes:
        methods = axes.get("model.sparsity.method", (_base_value(base, "model.sparsity.method"),))
        found = sorted({dense_reference({"model": {"sparsity": {"method": m}}}, {"model.density": d})
                        for d in axes["model.density"] for m in methods} - {None})
        if found:
            notes.append(f"the cells at model.density 1 run the dense model, which has no mask for "
                         f"{' or '.join(found)} to change (their stored config says model.sparsity.method: static, "
                         f"its other model.sparsity keys at their defaults)"
                         + (f"; with {' and '.join(found)} both swept, that dense run runs once and is recorded "
                            f"at both grid positions" if len(found) > 1 else ""))
    return notes


#: The hint of a config check that takes a key out (``config.checks``): "remove it (on the command
#: line: model.sparsity.drop_fraction=0.3)", "remove data.augment (on the command line: ...)".
_REMOVE_HINT = re.compile(r"remove (?:it|[\w.]+) \(on the command line: ([^()]*)\)")


def swept_key_hint(message: str, swept: Mapping[str, Any], dense: str | None) -> str:
    """A grid cell's problem ``message`` (the cell at the ``swept`` values; ``dense``: its
    :func:`dense_reference` method) with a "remove it (on the command line: K=...)" hint for a key
    ``K`` the grid sweeps said as what the grid can do: that override is refused beside the axis,
    and removing it would not take the axis out. A cell that a density axis makes the dense model
    (method static) is told to leave 1 out of that axis and run the dense reference as a sweep of
    its own; one whose swept variant does not read ``K`` (:data:`VARIANT_OPTIONS`), to split the
    grid by that variant; any other, to take the axis out.

    >>> msg = "is read by model.sparsity.method rigl only (method is 'gmp'); remove it (on the command line: model.sparsity.drop_fraction=0.3)"
    >>> swept_key_hint(msg, {"model.sparsity.method": "gmp", "model.sparsity.drop_fraction": 0.1}, None).split("; ")[1]
    'the grid sweeps it, and sweep.grid.model.sparsity.method holds gmp, which does not read it: sweep it over the values that read it only, and run the others as a sweep of their own'
    >>> swept_key_hint(msg, {"model.density": 0.5}, None) == msg   # not swept: the override does it
    True
    """
    def hint(match: re.Match) -> str:
        words = match.group(1).split()
        key = next((k for k in (word.split("=", 1)[0] for word in words) if k in swept), None)
        if key is None:
            return match.group(0)
        rest = [word for word in words if word.split("=", 1)[0] not in swept]   # data.augment's other keys
        return grid_way(key) + (f" (the rest on the command line: {' '.join(rest)})" if rest else "")

    def grid_way(key: str) -> str:
        axis = f"sweep.grid.{key}"
        if dense is not None and key.startswith("model.sparsity."):
            density = _written(swept["model.density"])
            return (f"the grid sweeps it, and model.density {density} runs this cell as the dense model (method "
                    f"static): leave {density} out of sweep.grid.model.density and run the dense reference as a "
                    f"sweep of its own")
        for decider, option, readers in VARIANT_OPTIONS:
            if option == key and decider in swept and not _reads(readers, _normalized(decider, swept[decider])):
                return (f"the grid sweeps it, and sweep.grid.{decider} holds {_written(swept[decider])}, "
                        f"which does not read it: sweep it over the values that read it only, and run the others "
                        f"as a sweep of their own")
        return f"the grid sweeps it: take {axis} out of the grid"
    return _REMOVE_HINT.sub(hint, message)
