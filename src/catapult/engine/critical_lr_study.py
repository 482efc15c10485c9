"""The loss-catapult critical learning rate at init of a run config (``catapult critical-lr``).

Builds the config's model (same seeds and first batch as ``catapult train``) and optimizer at
``lr_trgt``, runs :func:`catapult.critical_lr` once on batch 0 and prints, side by side:

* ``lr_c`` with its bracket ``[lower, upper]`` and the forward passes spent;
* ``lambda_0``, the run's (the one ``optimizer.lr: c/lambda0`` reads: the top Hessian eigenvalue at
  initialisation, on batch 0 for full-batch runs and averaged over ``eval.lambda0_batches`` batches,
  10 by default, for minibatch runs, while the search runs on batch 0 alone), and the GD estimate
  ``2 / lambda_0`` (``lr_c ~ 2/lambda_0`` for wide MSE networks under GD; the ratio ``lr_c * lambda_0`` is printed);
* for Adam-family optimizers (adam, adamw, gi-adam), the pre-conditioned sharpness
  ``lambda_P0 = lambda_max(P^-1 H)`` of the first step's preconditioner and two estimates from it:
  the one-step estimate ``2 / ((1 - b1) lambda_P0)`` (the first Adam step moves by
  ``lr (1 - b1) s``, ``s = P^-1 g``, so on a quadratic the loss rises once ``lr`` exceeds
  ``2 s.P s / ((1 - b1) s.H s)``, which is at least this estimate and equals it when ``s`` is a top
  eigenvector of ``P^-1 H``: a lower bound of ``lr_c``, as ``2 / lambda_0`` is under GD) and the
  threshold estimate ``(2 + 2 b1) / ((1 - b1) lambda_P0)`` (the lr whose instability threshold
  equals ``lambda_P0``).

Nothing is trained and nothing is written (``--json`` prints the numbers as one JSON object).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from catapult import config as cfg
from catapult.arguments import check_flag

__all__ = ["estimate", "format_estimate"]


def estimate(config: Mapping[str, Any], *, cap: bool = False) -> dict:
    """Critical-lr search at initialisation for ``config`` (validated here), with curvature estimates.

    Returns a dict: ``lr_critical``, ``lower``, ``upper``, ``forward_passes``, ``loss0``,
    ``delta``, ``rtol``, ``lr_start``, ``lr_max`` (``lr_trgt`` with ``cap`` else None), ``lr_target``,
    ``lambda_0``, ``gd_estimate`` (``2/lambda_0``), ``lr_critical_times_lambda_0``, and for
    Adam-family optimizers ``preconditioned_sharpness`` (``lambda_P0``), ``one_step_estimate``
    (``2/((1-b1) lambda_P0)``) and ``threshold_estimate`` (``(2+2b1)/((1-b1) lambda_P0)``);
    ``None`` where not applicable. The search starts at ``schedule.lr_start`` (default
    ``min(1e-4, lr_trgt)``) with ``schedule.delta`` (default 0.1 for sgd, 0.01 for Adam-family)
    and ``schedule.rtol`` (default null: no bracket tolerance).
    """
    from catapult import curvature
    from catapult.critical_lr import NonFiniteLossError, NonFiniteStepError, critical_lr
    from catapult.engine.build import build_run, search_delta, search_lr_start, search_rtol, solver_options

    cap = check_flag("estimate", "cap", cap)  # cap="no" capped the search at lr_trgt
    setup = build_run(config)
    config, model, loss_fn, batch = setup.config, setup.model, setup.loss_fn, setup.batches.batch(0)
    solver = solver_options(config)
    lambda_0 = setup.lambda_0
    lr_trgt = setup.lr_target
    optimizer = setup.optimizer
    delta, lr_start, rtol = search_delta(config), search_lr_start(config, lr_trgt), search_rtol(config)
    try:
        res = critical_lr(model, loss_fn, batch, optimizer, lr_start=lr_start,
                          lr_max=lr_trgt if cap else None, delta=delta, rtol=rtol)
    except NonFiniteStepError as err:  # the optimizer's first step is nan: its settings, not a crash
        raise cfg.ConfigError([("optimizer", f"{err} (a run would diverge at its first update)")]) from None
    except NonFiniteLossError as err:  # nothing to search from: the config's model, not a crash
        raise cfg.ConfigError([("model", f"{err} (the run would diverge at step 0)")]) from None
    out = dict(name=config["name"], optimizer=config["optimizer"]["name"], lr_critical=res.lr,
               lower=res.lower, upper=res.upper, forward_passes=res.forward_passes, loss0=res.loss0,
               delta=delta, rtol=rtol, lr_start=lr_start, lr_max=lr_trgt if cap else None, lr_target=lr_trgt,
               lambda_0=lambda_0, gd_estimate=2.0 / lambda_0 if lambda_0 > 0 else None,
               lr_critical_times_lambda_0=res.lr * lambda_0 if math.isfinite(res.lr) else None,
               preconditioned_sharpness=None, one_step_estimate=None, threshold_estimate=None)
    if config["optimizer"]["name"] in cfg.PRECONDITIONED_OPTIMIZERS:
        lam_p = float(curvature.preconditioned_sharpness(model, loss_fn, batch, optimizer,
                                                         scale_by_group_lr=True, **solver).value)
        b1 = float(config["optimizer"]["betas"][0])
        out["preconditioned_sharpness"] = lam_p
        if lam_p > 0:
            out["one_step_estimate"] = 2.0 / ((1.0 - b1) * lam_p)
            out["threshold_estimate"] = (2.0 + 2.0 * b1) / ((1.0 - b1) * lam_p)
    return out


def format_estimate(e: Mapping[str, Any]) -> str:
    """Human-readable lines for :func:`estimate`'s result."""
    def f(x):
        return "-" if x is None else f"{x:.4g}"

    # a search that saw no rise (up to the cap, or in 64 doublings) or rose at its first trial bounds lr_c:
    # printed as 'lr_c = 0.01', read as a measured critical lr
    from catapult.engine.records import critical_lr_relation   # here: records load with the output only

    relation = critical_lr_relation(e["lower"], e["upper"])
    lines = [
        f"{e['name']} ({e['optimizer']}): lr_c {relation} {f(e['lr_critical'])}  bracket [{f(e['lower'])}, {f(e['upper'])}]"
        f"  forward passes {e['forward_passes']}  (delta {e['delta']:g}"
        + (f", rtol {e['rtol']:g}" if e.get("rtol") is not None else "") + f", lr_start {e['lr_start']:g}"
        + (f", capped at lr_trgt {e['lr_max']:.4g})" if e["lr_max"] is not None else ")"),
        f"  lambda_0 = {f(e['lambda_0'])}  2/lambda_0 = {f(e['gd_estimate'])}"
        f"  lr_c * lambda_0 = {f(e['lr_critical_times_lambda_0'])}  lr_trgt = {f(e['lr_target'])}",
    ]
    if e["preconditioned_sharpness"] is not None:
        lines.append(f"  pre-conditioned sharpness lambda_P0 = {f(e['preconditioned_sharpness'])}"
                     f"  one-step 2/((1-b1) lambda_P0) = {f(e['one_step_estimate'])}"
                     f"  threshold (2+2b1)/((1-b1) lambda_P0) = {f(e['threshold_estimate'])}")
    return "\n".join(lines)
