"""``catapult critical-lr CONFIG [key=value ...]``: the loss-catapult critical learning rate at init.

Builds the config's model (same seeds and first batch as ``catapult train``) and optimizer at
``lr_trgt``, runs :func:`catapult.critical_lr` once on batch 0 and prints, side by side:

* ``lr_c`` with its bracket ``[lower, upper]`` and the forward passes spent;
* ``lambda_0`` (top Hessian eigenvalue on batch 0) and the GD estimate ``2 / lambda_0``
  (``lr_c ~ 2/lambda_0`` for wide MSE networks under GD; the ratio ``lr_c * lambda_0`` is printed);
* for Adam-family optimizers (adam, adamw, gi-adam), the pre-conditioned sharpness
  ``lambda_P0 = lambda_max(P^-1 H)`` of the first step's preconditioner and two estimates from it:
  the one-step estimate ``2 / ((1 - b1) lambda_P0)`` (the first Adam step moves by
  ``lr (1 - b1) P^-1 g``, so on a quadratic the loss rises once ``lr`` exceeds it) and the
  threshold estimate ``(2 + 2 b1) / ((1 - b1) lambda_P0)`` (the lr whose instability threshold
  equals ``lambda_P0``).

Nothing is trained and nothing is written (``--json`` prints the numbers as one JSON object).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from catapult import config as cfg

__all__ = ["estimate", "format_estimate", "register"]


def estimate(config: Mapping[str, Any], *, cap: bool = False) -> dict:
    """Critical-lr search at initialisation for ``config`` (validated here), with curvature estimates.

    Returns a dict: ``lr_critical``, ``lower``, ``upper``, ``forward_passes``, ``loss0``,
    ``delta``, ``lr_start``, ``lr_max`` (``lr_trgt`` with ``cap`` else None), ``lr_target``,
    ``lambda_0``, ``gd_estimate`` (``2/lambda_0``), ``lr_critical_times_lambda_0``, and for
    Adam-family optimizers ``preconditioned_sharpness`` (``lambda_P0``), ``one_step_estimate``
    (``2/((1-b1) lambda_P0)``) and ``threshold_estimate`` (``(2+2b1)/((1-b1) lambda_P0)``);
    ``None`` where not applicable. The search starts at ``schedule.lr_start`` (default
    ``min(1e-4, lr_trgt)``) with ``schedule.delta`` (default 0.1 for sgd, 0.01 for Adam-family).
    """
    from catapult import curvature
    from catapult.critical_lr import critical_lr
    from catapult.losses import get_loss
    from catapult import train

    config = cfg.validate(config)
    device = train.resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    data = train.load_data(config, device, dtype)
    batches = train.BatchStream(data.x_train, data.y_train, config["train"]["batch_size"],
                                train.seeds(config["seed"])[1])
    batch = batches.batch(0)
    model = train.build_model(config, data.in_features, data.num_classes, device, dtype)
    model.train()
    loss_fn = get_loss(config["loss"])
    solver = train.solver_options(config)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = torch.randn(n_params, generator=torch.Generator().manual_seed(train.seeds(config["seed"])[2]))
    start = start.to(device=device, dtype=dtype)
    lambda_0 = float(curvature.sharpness(model, loss_fn, batch, init=start, **solver).value)
    lr_spec = cfg.parse_lr(config["optimizer"]["lr"])
    try:
        lr_trgt = lr_spec.resolve(lambda_0)
    except ValueError as err:
        raise cfg.ConfigError([("optimizer.lr", str(err))]) from None
    optimizer = train.build_optimizer(config, model, lr_trgt)
    delta, lr_start = train.search_delta(config), train.search_lr_start(config, lr_trgt)
    res = critical_lr(model, loss_fn, batch, optimizer, lr_start=lr_start,
                      lr_max=lr_trgt if cap else None, delta=delta)
    out = dict(name=config["name"], optimizer=config["optimizer"]["name"], lr_critical=res.lr,
               lower=res.lower, upper=res.upper, forward_passes=res.forward_passes, loss0=res.loss0,
               delta=delta, lr_start=lr_start, lr_max=lr_trgt if cap else None, lr_target=lr_trgt,
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

    lines = [
        f"{e['name']} ({e['optimizer']}): lr_c = {f(e['lr_critical'])}  bracket [{f(e['lower'])}, {f(e['upper'])}]"
        f"  forward passes {e['forward_passes']}  (delta {e['delta']:g}, lr_start {e['lr_start']:g}"
        + (f", capped at lr_trgt {e['lr_max']:.4g})" if e["lr_max"] is not None else ")"),
        f"  lambda_0 = {f(e['lambda_0'])}  2/lambda_0 = {f(e['gd_estimate'])}"
        f"  lr_c * lambda_0 = {f(e['lr_critical_times_lambda_0'])}  lr_trgt = {f(e['lr_target'])}",
    ]
    if e["preconditioned_sharpness"] is not None:
        lines.append(f"  pre-conditioned sharpness lambda_P0 = {f(e['preconditioned_sharpness'])}"
                     f"  one-step 2/((1-b1) lambda_P0) = {f(e['one_step_estimate'])}"
                     f"  threshold (2+2b1)/((1-b1) lambda_P0) = {f(e['threshold_estimate'])}")
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``critical-lr`` subcommand."""
    from catapult.cli import add_config_arguments

    p = subparsers.add_parser(
        "critical-lr",
        help="critical learning rate at init from a loss catapult (forward passes only), beside 2/lambda_0",
        description="Run the critical-lr search (warmup paper Alg. 1-2) on the config's model at "
                    "initialisation and print lr_c, its bracket and the forward passes, beside "
                    "2/lambda_0 (and, for Adam-family optimizers, estimates from the pre-conditioned "
                    "sharpness). Nothing is trained or written.",
    )
    add_config_arguments(p)
    p.add_argument("--cap", action="store_true", help="stop the search at lr_trgt (as the catapult warmup does)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.set_defaults(func=_command)


def _command(args) -> int:
    from catapult.cli import config_from_args

    config = config_from_args(args)
    e = estimate(config, cap=args.cap)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in e.items()}))
    else:
        print(format_estimate(e))
    return 0
