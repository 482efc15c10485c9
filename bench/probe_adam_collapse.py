"""Why does Adam with a 300-step warmup collapse where Adam without warmup trains? (W7, FCN, T = 30,000)

Replays one cell of ``configs/adam/table1_failure.yaml`` (``model.width=64 data.n_train=500
schedule.decay=cosine train.steps=30000``, full-batch MSE) with the engine's own parts
(:func:`catapult.engine.build_run`: the same model, data, optimizer and schedule; the loop below
takes the engine's steps in the engine's order, so the training loss is the store's bit for bit
at one thread, checked with ``--check STORE``) and logs what the engine does not:

* every step: lr_t, training loss and accuracy, ||g||, ||theta_{t+1} - theta_t||, the largest
  per-coordinate step over lr_t (Adam's normalised step, ~1 for sign-like steps), the dead ReLU units of
  each hidden layer (no positive pre-activation on any of the 500 inputs);
* every ``--v-every`` steps: Adam's bias-corrected second moment, sqrt(v_hat): its median and 1st
  percentile, and the share of coordinates with sqrt(v_hat) < eps and < 10 eps (the eps floor);
* every ``--sharp-every`` steps: the pre-conditioned sharpness the engine logs for Adam
  (``lambda_max(P^-1 H)`` of the next update, :func:`catapult.preconditioned_sharpness` through the
  run's own :class:`~catapult.engine.sharpness_rule.SharpnessRule`) and, with ``--hessian``, the
  Hessian's; the threshold 38 / lr_t (b1 = 0.9) beside it.

It stops after ``--stop`` steps (the schedule is still that of ``train.steps``). Output: a CSV, one
row per step (the sharpness and v columns empty where not measured).

    OMP_NUM_THREADS=1 nice -n 10 python bench/probe_adam_collapse.py --seed 1 --twrm 300 --lr 0.015625 --stop 8000 --out /tmp/c.csv

``--kill 27,24,25`` kills all but that many units of each hidden layer at init (a random choice seeded by
the run's seed): a warmup run with the unit count a no-warmup run is left with after its first steps.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time

import torch
import yaml

from catapult.engine import build_run
from catapult.engine.step import measures_sharpness

COLUMNS = ["step", "lr", "threshold", "train_loss", "train_accuracy", "grad_norm", "update_norm",
           "update_max_over_lr", "dead_0", "dead_1", "dead_2", "sqrt_vhat_median", "sqrt_vhat_p01",
           "frac_below_eps", "frac_below_10eps", "precond_sharpness", "hessian_sharpness"]


def config_of(seed: int, twrm: int, lr: float, sets: list[str]) -> dict:
    with open("configs/adam/table1_failure.yaml") as fh:
        c = yaml.safe_load(fh)
    c.pop("sweep")
    c.update(seed=seed)
    c["model"]["width"], c["data"]["n_train"], c["train"]["steps"] = 64, 500, 30000
    c["schedule"].update(decay="cosine", warmup_steps=twrm)
    c["optimizer"].update(name="adam", lr=lr, betas=[0.9, 0.999])
    c["eval"].update(sharpness_every=0, test_every=100)
    for item in sets:
        key, value = item.split("=", 1)
        node = c
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return c


def kill_units(model, alive: list[int], seed: int) -> None:
    """Leave ``alive[i]`` units of hidden layer i; zero the rest's weight rows and biases (dead ReLU units for good)."""
    hidden = model.layers[:-1]
    if len(alive) != len(hidden):
        raise SystemExit(f"--kill: {len(alive)} counts for {len(hidden)} hidden layers")
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for layer, keep in zip(hidden, alive):
            width = layer.weight.shape[0]
            if not 0 < keep <= width:
                raise SystemExit(f"--kill: {keep} alive units of a layer of {width}")
            dead = torch.randperm(width, generator=gen)[keep:]
            layer.weight[dead] = 0.0
            if layer.bias is not None:
                layer.bias[dead] = 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--twrm", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.015625)
    p.add_argument("--stop", type=int, default=30000)
    p.add_argument("--sharp-every", type=int, default=100)
    p.add_argument("--v-every", type=int, default=10)
    p.add_argument("--hessian", action="store_true", help="also the Hessian's sharpness")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value (dtype=float64, optimizer.eps=1e-12)")
    p.add_argument("--check", help="a sweep store holding this cell: compare the training loss step by step")
    p.add_argument("--units", help="write the hidden units' state at the last step here (JSON): per layer the alive "
                                   "units, and over them the median share of inputs a unit is active on, the median of "
                                   "its largest and of its mean positive pre-activation, its bias, its weight row norm")
    p.add_argument("--kill", help="comma-separated alive units to leave per hidden layer (27,24,25): the rest, drawn "
                                  "at random (generator seeded 1000 + seed), are killed at init (weight row and bias "
                                  "zero: no positive pre-activation, so no gradient reaches them again)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    torch.set_num_threads(1)
    config = config_of(a.seed, a.twrm, a.lr, a.set)
    run = build_run(config)
    model, loss_fn, batches, opt = run.model, run.loss_fn, run.batches, run.optimizer
    eps, (b1, b2) = opt.param_groups[0]["eps"], opt.param_groups[0]["betas"]
    schedule = run.warmup.schedule
    from catapult import schedules
    scheduler = schedules.attach(opt, schedule)
    params = [q for q in model.parameters() if q.requires_grad]
    if a.kill:
        kill_units(model, [int(n) for n in a.kill.split(",")], a.seed)

    alive: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, i=i: alive.__setitem__(i, (out > 0).any(0)))
             for i, layer in enumerate(model.layers[:-1])]
    warm_p = warm_h = run.start_vector
    rows, started = [], time.perf_counter()
    x, y = batches.batch(0)
    for t in range(a.stop + 1):
        lr_t = float(schedule(t))
        row = dict.fromkeys(COLUMNS)
        row.update(step=t, lr=lr_t, threshold=(2 + 2 * b1) / ((1 - b1) * lr_t) if lr_t > 0 else float("inf"))
        out = model(x)
        loss = loss_fn(out, y)
        row["train_loss"] = float(loss.detach())
        row["train_accuracy"] = float((out.argmax(1) == y.argmax(1) if y.ndim == 2 else out.argmax(1) == y)
                                      .float().mean())
        for i in range(len(hooks)):
            row[f"dead_{i}"] = int((~alive[i]).sum())
        if not torch.isfinite(loss):
            rows.append(row)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        row["grad_norm"] = float(torch.sqrt(sum((q.grad.double() ** 2).sum() for q in params)))
        if measures_sharpness(t, a.sharp_every, a.stop) and t > 0:
            est = run.sharpness.measure(model, loss_fn, (x, y), opt, warm_p, kind="preconditioned")
            row["precond_sharpness"], warm_p = float(est.value), est.vector
            if a.hessian:
                est = run.sharpness.measure(model, loss_fn, (x, y), opt, warm_h, kind="hessian")
                row["hessian_sharpness"], warm_h = float(est.value), est.vector
        before = [q.detach().clone() for q in params]
        del loss, out
        if t == a.stop:
            rows.append(row)
            break
        opt.step()
        scheduler.step()
        with torch.no_grad():
            d = torch.cat([(q - q0).reshape(-1) for q, q0 in zip(params, before)]).double()
            row["update_norm"] = float(d.norm())
            row["update_max_over_lr"] = float(d.abs().max() / lr_t) if lr_t > 0 else None
            if t % a.v_every == 0:
                state = [opt.state[q] for q in params]
                step = float(state[0]["step"])
                v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).double() / (1 - b2 ** step)
                s = v.sqrt()
                row["sqrt_vhat_median"] = float(s.median())
                row["sqrt_vhat_p01"] = float(torch.quantile(s, 0.01))
                row["frac_below_eps"] = float((s < eps).double().mean())
                row["frac_below_10eps"] = float((s < 10 * eps).double().mean())
        rows.append(row)
    for h in hooks:
        h.remove()
    if a.units:
        import json
        pre: dict[int, torch.Tensor] = {}
        grab = [layer.register_forward_hook(lambda mod, inp, out, i=i: pre.__setitem__(i, out.detach()))
                for i, layer in enumerate(model.layers[:-1])]
        with torch.no_grad():
            model(x)
        for h in grab:
            h.remove()
        units = {}
        for i, z in pre.items():
            live = (z > 0).any(0)
            zl = z[:, live]
            layer = model.layers[i]
            w = layer.weight.detach()[live]
            b = layer.bias.detach()[live] if layer.bias is not None else torch.zeros(int(live.sum()))
            med = lambda v: float(v.median()) if v.numel() else None
            units[f"layer_{i + 1}"] = dict(
                alive=int(live.sum()), active_share=med((zl > 0).double().mean(0)), max_pre=med(zl.max(0).values),
                mean_pos_pre=med(zl.clamp(min=0).mean(0)), bias=med(b), weight_norm=med(w.norm(dim=1)))
        with open(a.units, "w") as fh:
            json.dump(dict(seed=a.seed, twrm=a.twrm, lr=a.lr, step=a.stop, units=units), fh, indent=1)
    wall = time.perf_counter() - started
    with open(a.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"{a.out}: {len(rows)} rows, {wall:.0f} s", file=sys.stderr)
    if a.check:
        from catapult.sweep.store import Store
        store = Store(a.check, create=False)
        match = [c for c in store.cells() if c["config"]["seed"] == a.seed
                 and c["config"]["schedule"]["warmup_steps"] == a.twrm and c["config"]["optimizer"]["lr"] == a.lr]
        ref = {m["step"]: m["train_loss"] for m in store.metrics(match[0]["id"])}
        diff = [r["step"] for r in rows if r["step"] in ref and ref[r["step"]] != r["train_loss"]]
        print(f"check against {a.check}: {len(rows) - len(diff)} of {len(rows)} steps equal bit for bit; "
              f"first different step {diff[0] if diff else None}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
