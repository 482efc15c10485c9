"""lambda_0 (sharpness at initialization), measured once per architecture, seed and data.

The paper's phase diagrams put ``lr_trgt = 2^x / lambda_0`` on one axis: every cell of a row
shares one lambda_0. A sweep measures it once per distinct :func:`lambda0_key` (and caches
it in the store), then hands each cell an absolute learning rate ``c / lambda_0``, exactly the
number :func:`catapult.engine.run` would compute itself from ``"c/lambda0"``.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any, Mapping, NamedTuple

from catapult import config as cfg
from catapult.engine.step import lambda0_batch_count
from catapult.sweep.spec import canonical_json

__all__ = ["lambda0_key", "lambda0_inputs", "measure_lambda0", "Lambda0", "lambda0_measurement", "needs_lambda0",
           "resolve_cell_lr"]


def lambda0_inputs(config: Mapping[str, Any]) -> dict:
    """The part of a config that lambda_0 depends on.

    lambda_0 = top Hessian eigenvalue of the training loss at ``theta_0`` on batch 0, averaged
    over batches ``0 .. k-1`` for minibatch runs (``eval.lambda0_batches``; part of the key only
    when k > 1, so full-batch keys are those of earlier versions) (engine
    semantics, :mod:`catapult.engine.loop`), so it depends on the seed, device, dtype, data, model,
    loss, batch size (batch 0) and the eigen-solver settings, and on nothing about the
    optimizer, schedule or training length. The solver's memory settings
    (``sharpness_max_basis``, ``sharpness_chunk_size``) change how the value is computed, not
    the value (beyond ``sharpness_tol``), so they are not part of it.
    """
    ev = config["eval"]
    return {
        "seed": config["seed"],
        "device": config["device"],
        "dtype": config["dtype"],
        "data": copy.deepcopy(config["data"]),
        "model": copy.deepcopy(config["model"]),
        "loss": config["loss"],
        "batch_size": config["train"]["batch_size"],
        "solver": {k: ev[k] for k in ("sharpness_tol", "sharpness_max_iter", "sharpness_hvp", "sharpness_dtype")},
        **({} if lambda0_batch_count(config) == 1 or config["train"]["batch_size"] is None
           else {"lambda0_batches": lambda0_batch_count(config)}),
    }


def lambda0_key(config: Mapping[str, Any]) -> str:
    """Cache key: sha256 (first 16 hex digits) of the canonical JSON of :func:`lambda0_inputs`."""
    return hashlib.sha256(canonical_json(lambda0_inputs(config)).encode()).hexdigest()[:16]


def needs_lambda0(config: Mapping[str, Any]) -> bool:
    """True if the config's ``optimizer.lr`` is ``"<c>/lambda0"``."""
    return cfg.lr_needs_lambda0(config["optimizer"]["lr"])


def resolve_cell_lr(config: Mapping[str, Any], lambda_0: float | None) -> dict:
    """A copy of ``config`` with ``optimizer.lr`` absolute: ``c / lambda_0`` for ``"c/lambda0"``
    (the same float the engine computes), unchanged otherwise."""
    out = copy.deepcopy(dict(config))
    out["optimizer"] = dict(out["optimizer"])
    out["optimizer"]["lr"] = cfg.resolve_lr(config["optimizer"]["lr"], lambda_0)
    return out


def measure_lambda0(config: Mapping[str, Any]) -> float:
    """lambda_0 for a config, computed exactly as :func:`catapult.engine.run` does before training.

    Same seeds (``seeds(seed)``: init, data, sharpness start vector), same model build, batch 0
    of the same :class:`~catapult.engine.BatchStream`, Hessian sharpness with the config's
    ``eval.sharpness_*`` solver settings from ``randn(P, generator=sharpness_seed)``, so the
    value is bit-for-bit the engine's on the same device. :func:`lambda0_measurement` gives
    whether its solves converged too.
    """
    return lambda0_measurement(config).value


class Lambda0(NamedTuple):
    """A measured lambda_0 and whether every solve it averages converged (``None``: unknown), the
    summary's ``lambda_0`` and ``lambda_0_converged``; a sweep's cache keeps both.

    >>> Lambda0(2.5, False)
    Lambda0(value=2.5, converged=False)
    """

    value: float
    converged: bool | None


def lambda0_measurement(config: Mapping[str, Any]) -> Lambda0:
    """:func:`measure_lambda0`'s value with its convergence mark (every solve of the
    ``eval.lambda0_batches`` it averages reached ``eval.sharpness_tol``), as the run's summary
    gives them (the default ``lambda0_fn`` of :func:`catapult.sweep.run_sweep`).

    >>> from catapult import config as cfg
    >>> lam = lambda0_measurement(cfg.validate({"data": {"name": "digits", "n_train": 16, "n_test": 8},
    ...                                         "model": {"width": 8, "depth": 2}}))
    >>> lam.value > 0, lam.converged
    (True, True)
    """
    from catapult.engine import build_run

    run = build_run(config)
    return Lambda0(run.lambda_0, all(bool(e.converged) for e in run.lambda0_estimates))
