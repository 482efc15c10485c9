"""The curvature spectrum of a run config's model (``catapult spectrum``).

Builds the config's model and data (the same seeds and first batch as ``catapult train``),
optionally loads trained weights (the ``model.pt`` a ``catapult train`` or ``train-ddp`` run
directory holds), and measures on batch 0, with the config's ``eval.sharpness_*`` solver
settings:

* the top-``k`` eigenvalues (:func:`catapult.top_eigenpairs`), with the products spent and
  whether every pair converged to ``eval.sharpness_tol``;
* the trace (:func:`catapult.hessian_trace`, Hutch++);
* the spectral density (:func:`catapult.spectral_density`, stochastic Lanczos quadrature).

``curvature="ggn"`` takes the Gauss-Newton matrix instead of the Hessian; ``preconditioned``
(Adam-family optimizers) the operator ``P^-1/2 H P^-1/2`` of the optimizer's first step, as
``catapult critical-lr`` does. Nothing is trained and nothing is written.

Weights are read with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler
(tensors and plain containers only), and checked against the model (names, shapes, finite
values) before any product is taken.
"""
from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from catapult import config as cfg
from catapult.arguments import MAX_PRODUCTS, check_integer
from catapult.files import missing_file_problem
from catapult.parametrize_state import ParametrizationMismatch
from catapult.writing import counted

__all__ = ["run_config_problems", "measure_spectrum", "load_weights", "vocabulary_source", "format_spectrum",
           "with_function_record"]

#: The key, in the root entry of a run's ``model.pt`` ``state_dict._metadata``, of the model section's keys
#: that change its function (:func:`catapult.models.options.function_record`).
FUNCTION_RECORD_KEY = "catapult_model"


def with_function_record(weights: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """``weights`` (a ``state_dict``) with the model section's keys that change its function recorded in
    its ``_metadata`` (kept by ``torch.save`` and ``torch.load(weights_only=True)``; keys and tensors
    unchanged), so that :func:`load_weights` refuses them for a config of another function even where
    the file was copied away from its run folder (its ``config.yaml``).

    >>> from collections import OrderedDict
    >>> model = cfg.validate({"model": {"name": "mlp", "activation": "tanh"}})["model"]
    >>> state = with_function_record(OrderedDict(w=torch.zeros(1)), model)
    >>> state._metadata[""][FUNCTION_RECORD_KEY], list(state)
    ({'activation': 'tanh', 'alpha_in': 1.0, 'alpha_out': 1.0}, ['w'])
    """
    from collections import OrderedDict

    from catapult.models.options import function_record

    state = weights if isinstance(weights, OrderedDict) else OrderedDict(weights)
    metadata = getattr(state, "_metadata", None)
    if metadata is None:
        metadata = state._metadata = OrderedDict()   # type: ignore[attr-defined]
    metadata[""] = {**metadata.get("", {}), FUNCTION_RECORD_KEY: function_record(model_cfg)}
    return state


def _function_problem(state: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any], path: Path) -> str | None:
    """Why weights recorded with another function (:func:`with_function_record`) do not fit a model
    built from ``model_cfg``; None where they agree or the file records nothing (saved before the
    record was)."""
    from catapult.models.options import function_record

    metadata = getattr(state, "_metadata", None) or {}
    saved = next((entry[FUNCTION_RECORD_KEY] for entry in (metadata.get(""), metadata.get("module"))
                  if isinstance(entry, Mapping) and isinstance(entry.get(FUNCTION_RECORD_KEY), Mapping)), None)
    if saved is None:
        return None
    mine = function_record(model_cfg)
    changed = [key for key in mine if key in saved and saved[key] != mine[key]]
    if not changed:
        return None
    shown = ", ".join(f"model.{k}={saved[k]!r} (the config: {mine[k]!r})" for k in changed)
    return (f"{path} was trained with {shown}: the same weights compute another function; measure them with "
            f"the model section they were trained with")


def load_weights(model: nn.Module, path: str | Path, *, key: str = "weights",
                 vocabulary: tuple[str, str] | None = None, model_config: Mapping[str, Any] | None = None) -> None:
    """Load the ``state_dict`` saved at ``path`` into ``model``.

    Refuses, with a :class:`~catapult.config.ConfigError` naming ``key`` and the problem, a
    missing file, a file that is not a tensor dictionary (anything but tensors and plain
    containers is refused by ``weights_only``), missing or unexpected entries, a shape that
    differs from the model's, a floating dtype finer than the model's (loading would round it),
    non-finite values (a diverged run's weights) and weights saved under
    another parametrization or density. A
    ``DistributedDataParallel`` state (every name prefixed ``module.``) is accepted.
    ``vocabulary``: ``(config key, what sets it)`` of a GPT's token ids, named instead of ``key``
    where the saved embedding has another number of rows (:func:`measure_spectrum` passes it).
    ``model_config``: the config's model section, refused where the file records
    (:func:`with_function_record`) another value of a key that changes the model's function.
    """
    path = Path(path)
    if (problem := missing_file_problem(path)) is not None:
        raise cfg.ConfigError([(key, problem)])
    if (damaged := _damaged_entry(path)) is not None:
        raise cfg.ConfigError([(key, f"{path} is damaged: its entry {damaged} does not match the CRC-32 torch.save "
                                     "recorded for it (a changed or corrupted copy); save or copy the weights again")])
    try:
        with warnings.catch_warnings():  # e.g. a pickle protocol torch.save does not write
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a text file, a foreign or hostile pickle, a truncated archive
        # torch's own message suggests weights_only=False, which would run the file's code: not quoted
        # (a text file fails the same way: only a pickle or torch's zip archive is said to hold objects)
        why = (": it holds objects other than tensors, refused unread" if "Weights only load failed" in str(err)
               and _head(path).startswith((b"\x80", b"PK\x03\x04")) else "")
        raise cfg.ConfigError([(key, f"{path} is not a state_dict written by torch.save{why}")]) from None
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise cfg.ConfigError([(key, f"{path} holds no state_dict (a mapping of names to tensors)")])
    for name, tensor in state.items():  # what torch.save of a model's state_dict never holds, refused before use
        kind = ("sparse" if tensor.layout != torch.strided else "quantized" if tensor.is_quantized
                else "meta (data-less)" if tensor.is_meta else "complex" if tensor.is_complex() else None)
        if kind:
            raise cfg.ConfigError([(key, f"{path}: {name} is a {kind} tensor; a model's weights are dense real tensors")])
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    if vocabulary is not None:
        _check_vocabulary(model, own, state, path, *vocabulary)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else "")]
                 if unexpected else [])
        raise cfg.ConfigError([(key, f"{path} does not fit the config's model: {'; '.join(parts)}")])
    for name, mine in own.items():
        if tuple(state[name].shape) != tuple(mine.shape):
            raise cfg.ConfigError([(key, f"{path}: {name} has shape {tuple(state[name].shape)}, the config's "
                                         f"model has {tuple(mine.shape)}")])
        if mine.is_floating_point() != state[name].is_floating_point():  # load_state_dict would cast it
            raise cfg.ConfigError([(key, f"{path}: {name} is {state[name].dtype}, the config's model has "
                                         f"{mine.dtype}")])
        if mine.is_floating_point() and torch.finfo(state[name].dtype).eps < torch.finfo(mine.dtype).eps:
            # load_state_dict rounded them to the model's dtype, and the spectrum was the rounded
            # weights' without a word (an upcast is exact and is taken)
            raise cfg.ConfigError([(key, f"{path}: {name} is {state[name].dtype}, the config's model has {mine.dtype} "
                                         f"(loading would round the weights): set dtype: "
                                         f"{str(state[name].dtype).removeprefix('torch.')} in the config")])
        if state[name].is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            raise cfg.ConfigError([(key, f"{path}: {name} holds non-finite values (weights of a diverged run?)")])
    if model_config is not None and (problem := _function_problem(state, model_config, path)) is not None:
        raise cfg.ConfigError([(key, problem)])
    try:
        model.load_state_dict(state)
    except ParametrizationMismatch as err:  # saved under another parametrization or density: was a traceback
        raise cfg.ConfigError([(key, f"{path} does not fit the config's model: {err}")]) from None


def _damaged_entry(path: Path) -> str | None:
    """The first entry of the zip archive ``torch.save`` wrote at ``path`` whose bytes fail the CRC-32
    recorded for it, or None (every entry intact, or no archive zipfile reads: then torch.load judges
    the file). torch.load does not check the checksums: a flipped byte in a tensor's data was loaded,
    and measured, as the weights. A recorded CRC of 0 is not checked: torch writes 0 where it was told
    not to compute them (``torch.utils.serialization.config.save.compute_crc32 = False``)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                try:
                    with archive.open(info) as entry:   # read to its end: zipfile compares the CRC-32 there
                        while entry.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    return info.filename
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError):
        return None
    return None


def _head(path: Path) -> bytes:
    """The first 4 bytes of ``path`` (b"" where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def _check_vocabulary(model: nn.Module, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                      path: Path, key: str, source: str) -> None:
    """A ConfigError naming ``key`` where a GPT's saved token embedding has another number of rows
    than the model's vocabulary (set by ``source``: the config's ``data.vocab_size``, or the size a
    ``vocab_size.json`` beside its shards states): a config.yaml edited, or shards replaced, since
    the weights were trained; it was a shape mismatch of the weights, not saying which key."""
    mine, saved = own.get("wte.weight"), state.get("wte.weight")
    vocab = getattr(model, "vocab_size", None)
    if mine is None or saved is None or vocab is None or saved.ndim != 2 or saved.shape[0] == mine.shape[0]:
        return
    beside = path.parent / "config.yaml"
    run = f" (its run's {beside} says data.vocab_size: " if beside.is_file() else ""
    if run:
        try:
            run += f"{cfg.read_mapping(beside).get('data', {}).get('vocab_size', 'nothing')})"
        except (cfg.ConfigError, OSError, ValueError, AttributeError):
            run = ""
    raise cfg.ConfigError([(key, f"the config's model has {vocab} token ids ({source}), and {path} holds an "
                                 f"embedding of {saved.shape[0]}{run}: the weights were trained on another "
                                 f"vocabulary; measure them with the config, and the data, they were trained with")])


def vocabulary_source(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(key, what sets it)`` for the vocabulary of a validated config's ``data`` section where a
    key sets it: token shards (:func:`~catapult.engine.shard_run.reads_shards`) and BPE text. None
    for characters (the text's own) and images.

    >>> vocabulary_source({"name": "shakespeare", "tokenizer": "bpe", "root": None})
    ('data.vocab_size', 'the BPE tokenizer trained to data.vocab_size ids, at most')
    >>> vocabulary_source({"name": "digits", "tokenizer": "char", "root": None}) is None
    True
    """
    from catapult.engine.shard_run import reads_shards

    if reads_shards(data):
        return "data.vocab_size", ("data.vocab_size" if data["tokenizer"] == "none" else
                                   "the vocab_size.json beside the shards at data.root, else data.vocab_size")
    if data["name"] in cfg.TEXT_DATASETS and data["tokenizer"] == "bpe":
        return "data.vocab_size", "the BPE tokenizer trained to data.vocab_size ids, at most"
    return None


def run_config_problems(config: Mapping[str, Any], weights: Path) -> list[tuple[str, str]]:
    """``[("--weights", why)]`` when ``weights`` is a ``catapult train`` run's ``model.pt`` (its
    ``config.yaml`` and a run record beside it) whose run config's ``model`` section differs from
    ``config``'s: the weights load into a model of the same shapes, but with another activation or
    multiplier (``model.alpha_out``) it computes another function, and its spectrum was measured
    silently. Only keys the saved model is built from are named
    (:func:`~catapult.models.options.model_keys`: an mlp's weights under a gpt config name
    ``model.name``, not ``model.n_heads``). A run config that no longer validates is not compared."""
    from catapult.files import is_run_record

    folder = weights.parent
    beside = folder / "config.yaml"
    if not (beside.is_file() and any(is_run_record(folder / name) for name in ("metrics.csv", "summary.json"))):
        return []
    try:
        trained = cfg.validate(cfg.read_mapping(beside))["model"]
    except (cfg.ConfigError, OSError, ValueError):
        return []
    from catapult.models.options import model_keys

    # only the keys that make the saved model what it is (an mlp's has no model.n_heads), its name first
    changed = [key for key in model_keys(trained) if key in config["model"] and trained[key] != config["model"][key]]
    if not changed:
        return []
    shown = ", ".join(f"model.{k}={trained[k]!r} (the config: {config['model'][k]!r})" for k in changed[:4])
    if len(changed) > 4:   # the cut keys were not mentioned: the config looked nearer the run's than it is
        shown += f", and {len(changed) - 4} more ({', '.join('model.' + k for k in changed[4:])})"
    return [("--weights", f"{weights} was trained with {shown}, by {beside}; measure it with that config "
                          f"(`catapult spectrum {beside} --weights {weights}`)")]


def measure_spectrum(config: Mapping[str, Any], *, weights: str | Path | None = None, top_k: int = 5,
                     trace_matvecs: int = 100, density_runs: int = 8, density_steps: int = 40,
                     curvature: str = "hessian", preconditioned: bool = False) -> dict:
    """Top-``k`` eigenvalues, trace and spectral density of ``config``'s model on batch 0.

    ``top_k``, ``trace_matvecs`` or ``density_runs`` of 0 skip that measurement. Bad arguments
    (a negative count, an unknown curvature, ``preconditioned`` with a non-Adam optimizer or
    with ``weights``, whose file holds no optimizer state) are a ConfigError before the model is
    built; so are weights that do not fit the model (:func:`load_weights`) and a non-finite loss
    on batch 0, before any product. Returns a dict: ``name``, ``curvature``, ``preconditioned``, ``weights``,
    ``batch_size``, ``n_params``, ``eigenvalues`` (largest first), ``eigen_matvecs``,
    ``converged`` (and with eigenvalues: the largest ``residual`` of the pairs, the ``tol`` and
    ``hvp`` they were measured with, and ``max_iter``, the solve's product budget), ``trace``, ``trace_matvecs`` (asked), ``trace_products`` (spent: at most ``n_params``, where the
    trace is exact), ``density`` (the
    :class:`~catapult.curvature.spectrum.SpectralDensity`, or None), ``density_runs``,
    ``density_steps`` (asked; a run takes at most ``n_params``) and ``density_products`` (spent,
    with a density).
    """
    from catapult import curvature as curv
    from catapult.critical_lr import probe_loss
    from catapult.curvature.spectrum import CURVATURES
    from catapult.engine.build import build_run
    from catapult.engine.sharpness_rule import curvature_options, spectrum_estimates

    problems, counts = [], {}
    # counts of products, bounded as the library's are (MAX_PRODUCTS; a top-k solve spends >= 3 k)
    # (trace_matvecs: the products that run, min(it, n), are bounded once the model is built)
    for name, value, low, high in (("top_k", top_k, 0, MAX_PRODUCTS // 3), ("trace_matvecs", trace_matvecs, 0, None),
                                   ("density_runs", density_runs, 0, MAX_PRODUCTS),
                                   ("density_steps", density_steps, 1, MAX_PRODUCTS)):
        try:  # the library's one integer rule (np.int64(2) was refused here), the flag named
            counts[name] = check_integer("", name, value, low=low, high=high)
        except ValueError as err:
            problems.append((f"--{name.replace('_', '-')}", str(err).removeprefix(f"{name} ")))
    if counts.get("trace_matvecs") in (1, 2):  # Hutch++ splits its products in three
        problems.append(("--trace-matvecs", f"must be 0 (skip) or an integer >= 3; got {counts['trace_matvecs']}"))
    top_k, trace_matvecs, density_runs, density_steps = (counts.get(name, value) for name, value in (
        ("top_k", top_k), ("trace_matvecs", trace_matvecs), ("density_runs", density_runs),
        ("density_steps", density_steps)))
    if curvature not in CURVATURES:
        problems.append(("--curvature", f"must be one of {', '.join(CURVATURES)}, got {curvature!r}"))
    if not isinstance(preconditioned, bool):  # "no" measured the pre-conditioned spectrum
        problems.append(("--preconditioned", f"must be True or False, got {preconditioned!r}"))
        preconditioned = False
    config = cfg.validate(config)
    if preconditioned and config["optimizer"]["name"] not in cfg.PRECONDITIONED_OPTIMIZERS:
        problems.append(("--preconditioned", f"needs an Adam-family optimizer "
                                             f"({', '.join(sorted(cfg.PRECONDITIONED_OPTIMIZERS))}), "
                                             f"the config has optimizer.name={config['optimizer']['name']}"
                                             + ("; radam's first steps are un-rectified (momentum SGD) and "
                                                "have no preconditioner: leave --preconditioned out for "
                                                "their Hessian" if config["optimizer"]["name"] == "radam" else "")))
    if preconditioned and weights is not None:
        problems.append(("--preconditioned", "cannot go with --weights: the weights file holds no optimizer "
                                             "state, so the preconditioner would be a fresh optimizer's"))
    if weights is not None and (problem := missing_file_problem(weights)) is not None:
        problems.append(("--weights", problem))  # before the run is built (its data loaded)
    elif weights is not None:
        problems += run_config_problems(config, Path(weights))
    if problems:
        raise cfg.ConfigError(problems)

    setup = build_run(config)
    config, model, loss_fn, batch = setup.config, setup.model, setup.loss_fn, setup.batches.batch(0)
    if top_k > setup.n_params:
        raise cfg.ConfigError([("--top-k", f"{top_k} exceeds the model's {setup.n_params} parameters")])
    # a count >= n is the exact trace from n products: min(it, n) run, and are capped
    if min(trace_matvecs, setup.n_params) > MAX_PRODUCTS:
        raise cfg.ConfigError([("--trace-matvecs", f"must be at most {MAX_PRODUCTS} products, or at least the model's "
                                                   f"{setup.n_params} parameters where that is at most {MAX_PRODUCTS} "
                                                   f"(the exact trace); got {trace_matvecs}")])
    # a density run stops at the dimension: runs x min(steps, n) products run, and are capped
    if density_runs * min(density_steps, setup.n_params) > MAX_PRODUCTS:
        raise cfg.ConfigError([("--density-runs", f"x --density-steps must be at most {MAX_PRODUCTS} products; got "
                                                  f"{density_runs} x {min(density_steps, setup.n_params)}"
                                                  + ("" if density_steps <= setup.n_params else
                                                     f" (steps capped at the model's {setup.n_params} parameters)"))])
    if weights is not None:
        load_weights(model, weights, key="--weights", vocabulary=vocabulary_source(config["data"]),
                     model_config=config["model"])
    loss = probe_loss(model, loss_fn, batch)
    if not math.isfinite(loss):  # no curvature to measure: refused rather than a spectrum of NaNs
        raise cfg.ConfigError([("--weights" if weights is not None else "model",
                                f"the loss on batch 0 is {loss}: the model's outputs are not finite")])
    optimizer = setup.optimizer if preconditioned else None
    out: dict[str, Any] = dict(name=config["name"], curvature=curvature, preconditioned=bool(preconditioned),
                               weights=None if weights is None else str(weights), batch_size=int(batch[0].shape[0]),
                               n_params=setup.n_params, eigenvalues=[], eigen_matvecs=0, converged=None,
                               trace=None, trace_matvecs=trace_matvecs, density=None,
                               density_runs=density_runs, density_steps=density_steps, density_products=None)
    # Hutch++ with as many products as parameters takes the exact diagonal from n products instead
    out["trace_products"] = min(trace_matvecs, setup.n_params)
    eig, out["trace"] = spectrum_estimates(config, model, loss_fn, batch, top_k=top_k, trace_matvecs=trace_matvecs,
                                           optimizer=optimizer, curvature=curvature)
    if eig is not None:
        out.update(eigenvalues=[float(v) for v in eig.values], eigen_matvecs=int(eig.matvecs),
                   converged=bool(eig.converged), residual=max(float(r) for r in eig.residuals),
                   tol=float(config["eval"]["sharpness_tol"]), hvp=config["eval"]["sharpness_hvp"],
                   max_iter=max(int(config["eval"]["sharpness_max_iter"]), 3 * top_k))
    if density_runs:
        out["density"] = curv.spectral_density(model, loss_fn, batch, runs=density_runs, steps=density_steps,
                                               **curvature_options(config, optimizer, curvature))
        out["density_products"] = out["density"].matvecs
    return out


def not_converged(s: Mapping[str, Any]) -> str:
    """What to do about eigenpairs that did not reach ``eval.sharpness_tol``: more products where
    the solve used all of its budget (``max_iter``, the products' at least ``3 k``), else (it stopped
    below it: float32 rounding, or finite-difference products whose own error the residuals
    include, :mod:`catapult.curvature.certify`, above the tol) float64 or a looser tol, which more
    products would not replace (:data:`~catapult.engine.records.PRECISION_ADVICE`). Without
    ``max_iter`` (a result from before it was recorded): both.

    >>> not_converged({"residual": 2e-3, "tol": 1e-3, "hvp": "double_backprop", "eigen_matvecs": 100, "max_iter": 100})
    'NOT converged: the largest residual is 0.002, above eval.sharpness_tol=0.001; raise eval.sharpness_max_iter'
    >>> not_converged({"residual": 2e-6, "tol": 1e-7, "eigen_matvecs": 23, "max_iter": 100})[-89:]
    'loosen eval.sharpness_tol, or take the products in float64 (eval.sharpness_dtype=float64)'
    """
    from catapult.engine.records import PRECISION_ADVICE

    if "max_iter" not in s:
        advice = f"raise eval.sharpness_max_iter where it used all of it; where it stopped below it, {PRECISION_ADVICE}"
    elif s.get("eigen_matvecs", 0) >= s["max_iter"]:
        advice = "raise eval.sharpness_max_iter"
    else:
        advice = f"it stopped below eval.sharpness_max_iter ({s['eigen_matvecs']} of {s['max_iter']} products): {PRECISION_ADVICE}"
    if "residual" not in s:
        return f"NOT converged: {advice}"
    return f"NOT converged: the largest residual is {s['residual']:.2g}, above eval.sharpness_tol={s['tol']:g}; {advice}"


def format_spectrum(s: Mapping[str, Any]) -> str:
    """Human-readable lines for :func:`measure_spectrum`'s result."""
    what = {"hessian": "Hessian", "ggn": "Gauss-Newton matrix"}[s["curvature"]]
    if s["preconditioned"]:
        what = f"pre-conditioned {what} (P^-1/2 A P^-1/2, the first Adam step's P)"
    where = f"weights {s['weights']}" if s["weights"] else "initialisation"
    lines = [f"{s['name']}: {what} at {where}, batch 0 ({s['batch_size']} samples, {s['n_params']:,} parameters)"]
    if s["eigenvalues"]:
        values = ", ".join(f"{v:.6g}" for v in s["eigenvalues"])
        lines.append(f"  top {counted(len(s['eigenvalues']), 'eigenvalue')}: {values}  ({counted(s['eigen_matvecs'], 'product')}, "
                     f"{'converged' if s['converged'] else not_converged(s)})")
    if s["trace"] is not None:
        how = ("exact: the diagonal, one product per parameter" if s["trace_products"] >= s["n_params"]
               else "Hutch++")
        lines.append(f"  trace ({how}, {counted(s['trace_products'], 'product')}): {s['trace']:.6g}")
    dens = s["density"]
    if dens is not None:
        nodes = dens.nodes[dens.weights > 0] if dens.weights.size else dens.nodes
        low, high = (float(nodes.min()), float(nodes.max())) if nodes.size else (math.nan, math.nan)
        # what ran: a run stops at the dimension (steps capped at n_params) or at an invariant subspace
        steps = dens.nodes.shape[1] if dens.nodes.ndim == 2 else s["density_steps"]
        capped = f", {s['density_steps']} asked: at most one per parameter" if steps < s["density_steps"] else ""
        spent = s.get("density_products")
        early = ("" if spent is None or spent >= s["density_runs"] * steps else
                 f"; {counted(spent, 'product')}, runs that reached an invariant subspace stopped early")
        lines.append(f"  spectral density (SLQ, {counted(s['density_runs'], 'run')} x {counted(steps, 'step')}{capped}{early}): "
                     f"quadrature nodes in [{low:.4g}, {high:.4g}]")
    return "\n".join(lines)
