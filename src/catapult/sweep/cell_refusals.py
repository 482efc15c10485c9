"""Cells refused before a sweep writes its store or runs anything: a sharded model
(:func:`refuse_sharded_cells`), a CUDA device this machine lacks, a model too large for its memory,
more eigenvalues than parameters, fewer outputs than labels (:func:`refuse_impossible_cells`), and
data this machine does not have (:func:`refuse_missing_data`); each with the words of
``catapult train``'s refusal, every cell named at once."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from catapult import config as cfg
from catapult.arguments import MAX_PRODUCTS
from catapult.engine.build import build_model, load_data, resolve_device
from catapult.engine.model_size import (check_fits, check_labels, check_model_fits, check_spectrum_fits, model_parameters,
                                        shipped_model, training_fit)
from catapult.engine.sharpness_rule import check_spectrum_cadence
from catapult.engine.run_data import data_shape_bounds
from catapult.sweep.spec import CellSpec, canonical_json, cell_problems, cells_error

__all__ = ["refuse_impossible_cells", "refuse_missing_data", "refuse_sharded_cells"]


def refuse_sharded_cells(cells: list[CellSpec]) -> None:
    """Raise a :class:`~catapult.config.ConfigError` where a cell sets ``train.fsdp``: FSDP shards
    one model over the processes of ``catapult train-ddp``, and a sweep trains each cell in one
    process. Said once when the base config sets it, per cell when ``train.fsdp`` is swept."""
    words = "shards one model over the processes of catapult train-ddp; a sweep trains each cell in one process"
    problems: list[tuple[str, str]] = []
    for cell in cells:
        if not cell.config["train"]["fsdp"]:
            continue
        if "train.fsdp" not in cell.swept:
            raise cfg.ConfigError([("train.fsdp", words)])
        problems += cell_problems(cell.id, cell.swept, cfg.ConfigError([("train.fsdp", words)]))
    if problems:
        raise cells_error(problems)


def refuse_impossible_cells(cells: list[CellSpec]) -> None:
    """Raise one :class:`~catapult.config.ConfigError` naming every cell that asks a CUDA device
    this machine does not have, whose model cannot train in the memory of this machine (or of the
    cell's device) with the data it trains on (its weights, gradients and optimizer state, counted
    as ``catapult train`` counts them), or that asks more Hessian eigenvalues
    (``eval.spectrum_top_k``) than its model has parameters, or whose model of yours has fewer
    outputs than its data has labels (:func:`_label_problem`), before the store is written or any
    cell runs; each distinct model, device and data section is judged once, with the words of
    ``catapult train``'s refusal.

    Data is loaded only where its shapes decide: the model is counted first with the least shapes
    its data can have and then with the largest (:func:`catapult.engine.run_data.data_shape_bounds`,
    known without reading the data: fixed for the image datasets, bounded for text), and only where
    those bounds leave the answer open is the cell's data loaded, once per data section (data that
    does not load is the cell's to report)."""
    problems: list[tuple[str, str]] = []
    verdicts: dict[str, cfg.ConfigError | None] = {}
    shapes: dict[str, tuple[int, int] | None] = {}
    devices: dict[str, Any] = {}  # name -> torch.device, or the ConfigError of a CUDA device missing here
    loaded: dict[str, Any] = {}   # data section -> its data (None: does not load), for models of yours
    for cell in cells:
        name = cell.config["device"]
        if name not in devices:
            try:
                devices[name] = resolve_device(name)
            except cfg.ConfigError as err:
                devices[name] = err
        if isinstance(devices[name], cfg.ConfigError):  # a missing CUDA fails every cell that asks it
            if "device" in cell.swept:
                problems += cell_problems(cell.id, cell.swept, devices[name])
            elif devices[name].problems[0] not in problems:  # the base config's: said once
                problems += devices[name].problems
            continue
        key = canonical_json([cell.config["model"], cell.config["dtype"], cell.config["data"], str(devices[name]),
                              training_fit(cell.config)])
        if key not in verdicts:
            verdicts[key] = _size_problem(cell.config, devices[name], shapes) or _label_problem(cell.config, loaded)
        err = verdicts[key] or _spectrum_problem(cell.config, shapes)
        if err is not None:
            problems += cell_problems(cell.id, cell.swept, err)
    if problems:
        raise cells_error(problems)


def refuse_missing_data(cells: list[CellSpec]) -> None:
    """Raise the CIFAR loader's FileNotFoundError (every path looked at, where to get the files),
    or the text loader's (a ``data.root`` that does not exist, a folder with no text to train on),
    when this machine lacks the files a cell trains on, and one ConfigError naming every cell whose
    ``data.n_train`` / ``data.n_test`` asks more images than its dataset has, before the store is
    written: every cell of that data would fail, lambda_0 first. Each (name, root) is looked up
    once; nothing is read."""
    from catapult.data import find_cifar
    from catapult.engine.run_data import check_image_counts, check_text_root

    seen: set[tuple[str, str | None]] = set()
    problems: list[tuple[str, str]] = []
    counted: set[str] = set()
    for cell in cells:
        data = cell.config["data"]
        key = (data["name"], data["root"])
        if key not in seen:
            seen.add(key)
            if data["name"] in ("cifar10", "cifar100"):
                find_cifar(data["name"], data["root"])
            check_text_root(data)
        section = canonical_json(data)
        if section in counted:
            continue
        counted.add(section)
        try:
            check_image_counts(data)
        except cfg.ConfigError as err:
            problems += cell_problems(cell.id, cell.swept, err) if any(
                k.startswith("data.") for k in cell.swept) else err.problems
    if problems:
        raise cells_error(problems)


def _data_shapes(config: Mapping[str, Any], shapes: dict) -> tuple[int, int] | None:
    """The ``(in_features, classes)`` of ``config``'s data: known without reading where the
    dataset fixes them, else loaded once per data section and cached in ``shapes`` (None: the
    data did not load, which the cell itself then reports)."""
    low, high = data_shape_bounds(config["data"])
    if low == high:
        return low
    data_key = canonical_json(config["data"])
    if data_key not in shapes:
        try:
            data = load_data(config)
            shapes[data_key] = (data.in_features, data.num_classes)
        except Exception:  # noqa: BLE001  (a data problem is the cell's own error to report)
            shapes[data_key] = None
    return shapes[data_key]


def _size_problem(config: Mapping[str, Any], device, shapes: dict) -> cfg.ConfigError | None:
    """The :class:`~catapult.config.ConfigError` that ``catapult train`` raises for ``config``'s
    model too large for this machine (:func:`catapult.engine.check_model_fits` at the data's least
    shapes, then :func:`catapult.engine.model_size.check_fits` at its own), or None: its weights,
    their gradients and the optimizer's state, by train's rule
    (:func:`catapult.engine.model_size.training_fit`). The data is
    read only where the largest shapes it can have (:func:`catapult.engine.run_data.data_shape_bounds`)
    do not fit and its own shapes are not known without reading it."""
    dtype, fit = getattr(torch, config["dtype"]), training_fit(config)
    try:
        check_model_fits(config, device, **fit)  # first, as train does: its message where this refuses
        high = data_shape_bounds(config["data"])[1]
        try:
            check_fits(config, *high, device, dtype, **fit)
            return None  # fits whatever the data's shapes: nothing to read
        except cfg.ConfigError:
            pass
        exact = _data_shapes(config, shapes)  # the data's own shapes decide (None: it does not load,
        if exact is not None:                 # the cell's own error; its least shapes passed above)
            check_fits(config, *exact, device, dtype, **fit)
    except cfg.ConfigError as err:
        return err
    return None


def _label_problem(config: Mapping[str, Any], loaded: dict) -> cfg.ConfigError | None:
    """:func:`catapult.engine.model_size.check_labels`'s error for a model of yours (an
    ``engine.MODELS`` entry catapult does not ship) with fewer outputs than its data has labels
    (a CUDA device-side assert at the cell's first step), or None. The data is loaded once per data
    section, on the CPU, and only for such models; one that does not load or build is the cell's to report."""
    if shipped_model(config["model"]["name"]):
        return None
    key = canonical_json(config["data"])
    if key not in loaded:
        try:
            loaded[key] = load_data(config)
        except Exception:  # noqa: BLE001
            loaded[key] = None
    data = loaded[key]
    try:
        if data is not None:
            check_labels(config, build_model(config, data.in_features, data.num_classes), data)
    except cfg.ConfigError as err:
        return err
    except Exception:  # noqa: BLE001  (a model that does not build: the cell's own error)
        return None
    return None


def _spectrum_problem(config: Mapping[str, Any], shapes: dict) -> cfg.ConfigError | None:
    """:func:`catapult.engine.sharpness_rule.check_spectrum_cadence`'s or
    :func:`catapult.engine.model_size.check_spectrum_fits`'s error for ``config``, or None; the
    data's shapes come from :func:`_data_shapes` (loaded only where the count at the least shapes
    the data can have, :func:`~catapult.engine.run_data.data_shape_bounds`, does not settle it)."""
    top_k, trace = config["eval"].get("spectrum_top_k") or 0, config["eval"].get("trace_matvecs") or 0
    try:
        check_spectrum_cadence(config)   # (a trace of at most MAX_PRODUCTS fits whatever the model: min(it, n) run)
        if (not top_k or top_k <= model_parameters(config, *data_shape_bounds(config["data"])[0])) and trace <= MAX_PRODUCTS:
            return None
        exact = _data_shapes(config, shapes)
        if exact is None:
            return None
        check_spectrum_fits(config, model_parameters(config, *exact))
    except cfg.ConfigError as err:
        return err
    except (NotImplementedError, RuntimeError, TypeError, OverflowError):  # no count: no check
        return None
    return None
