"""Why does the muP-init + SμPar-lr ablation (``supar_lr``) transfer like full SμPar at small scale?

Trains the GPT of ``configs/supar/lr_transfer_small.yaml`` (BPE tokens; same schedule, batch and
steps) under ``mup``, ``supar_init``, ``supar_lr`` and ``supar`` at several densities and seeds,
one learning rate, and at chosen steps ``t`` measures on a fixed probe batch, for every sparse
hidden matrix (attention qkv / out, MLP in / out; each is ``y = c x (W ⊙ M)^T``):

* ``init``   = rms of ``c x_t (W_0 ⊙ M)^T``       -- what the init contributes to the layer's output;
* ``update`` = rms of ``c x_t ((W_t - W_0) ⊙ M)^T`` -- what training (the lr rule) has added;
* ``out``    = rms of ``c x_t (W_t ⊙ M)^T``;

with ``x_t`` the layer's input at step ``t`` (the same probe batch for every model). Beside that
ratio of output rms (``update_over_init``) each record holds the same ratio in weight norms, of
``D = (W_t - W_0) ⊙ M`` against ``W_0 ⊙ M``: Frobenius (``update_over_init_frob``) and spectral
(``update_over_init_spec``); the stable rank ``|D|_F^2 / |D|_2^2`` (``update_stable_rank``); the rms
of D's kept entries over the summed lr of the layer's group (``update_entry_over_lr_sum``: 1 for
updates of +-lr every step in a fixed sign); and each matrix's three ratios (``layers``). SμPar's init
rule makes ``init`` density-invariant, its lr rule makes ``update`` density-invariant; muP's give
``init ~ sqrt(density)`` and ``update ~ density``. Whichever part dominates ``out`` decides how the
activations (and so the optimal lr) move with density. Prints a table of the log2-log2 slope of
each part against density per (parametrization, step) -- 0 = density-invariant -- and the dense
model's ``update / init`` ratio, and writes every measurement as JSON.

    OMP_NUM_THREADS=1 nice -n 10 python bench/study_supar_ablation.py --out bench/supar_ablation_bpe.json
    python bench/study_supar_ablation.py --from-json bench/supar_ablation_bpe.json   # reprint its tables
    python bench/study_supar_ablation.py --widths-from w64.json w128.json --fig ratio_vs_width.png
        # the three ratios of runs at several widths (one JSON per width): per-seed values, mean ± std,
        # the log2-log2 slope between successive widths, and a fit ratio^2 = A + B / width
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from catapult import config as cfg
from catapult.engine.build import build_optimizer, build_run, build_schedule
from catapult.sparsity import MaskedLinear

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "supar" / "lr_transfer_small.yaml"


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def _spectral(t: torch.Tensor) -> float:
    """Largest singular value (float64, so an update far below the init's scale keeps its digits)."""
    return float(torch.linalg.matrix_norm(t.double(), ord=2))


def weight_ratios(w0: torch.Tensor, w: torch.Tensor) -> dict:
    """Frobenius and spectral ``|W - W0| / |W0|`` and the update's stable rank ``|D|_F^2 / |D|_2^2``
    (nan for a zero update) of two masked weights.

    >>> r = weight_ratios(torch.eye(3), torch.eye(3) + torch.diag(torch.tensor([0.5, 0.0, 0.0])))
    >>> round(r["frob"], 4), round(r["spec"], 4), round(r["stable_rank"], 4)
    (0.2887, 0.5, 1.0)
    """
    d = (w - w0).double()
    frob_d, spec_d = float(d.norm()), _spectral(d)
    return {"frob": frob_d / float(w0.double().norm()), "spec": spec_d / _spectral(w0),
            "stable_rank": frob_d ** 2 / spec_d ** 2 if spec_d > 0 else float("nan")}


def measure(config: dict, steps_at: list[int]) -> dict:
    """Train ``config`` for ``train.steps`` and measure the parts at ``steps_at`` (module docstring)."""
    run = build_run(config)
    model, c = run.model, run.config
    lr = float(cfg.parse_lr(c["optimizer"]["lr"]).resolve(None))
    optimizer = build_optimizer(c, model, lr)
    schedule = build_schedule(c, lr)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear) and n.startswith("blocks.")}
    w0 = {n: m.masked_weight().detach().clone() for n, m in layers.items()}
    kept = {n: (m.mask.clone() if m.mask is not None else torch.ones_like(w0[n], dtype=torch.bool))
            for n, m in layers.items()}
    group_of = {n: next(i for i, g in enumerate(optimizer.param_groups) if any(p is m.weight for p in g["params"]))
                for n, m in layers.items()}
    lr_sum = {n: 0.0 for n in layers}
    probe = run.data.x_test[:16]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: inputs.__setitem__(n, inp[0].detach()))
             for n, m in layers.items()]
    records = []

    def record(t: int) -> None:
        with torch.no_grad():
            model.eval()
            model(probe)
            model.train()
            parts = {"init": [], "update": [], "out": []}
            extra = {"frob": [], "spec": [], "stable_rank": [], "entry": []}
            per_layer = {}
            for n, m in layers.items():
                mult = float(getattr(m, "multiplier", 1.0))
                w = m.masked_weight().detach()
                x = inputs[n]
                parts["init"].append(mult * _rms(F.linear(x, w0[n])))
                parts["update"].append(mult * _rms(F.linear(x, w - w0[n])))
                parts["out"].append(mult * _rms(F.linear(x, w)))
                wr = weight_ratios(w0[n], w)
                for k in ("frob", "spec", "stable_rank"):
                    extra[k].append(wr[k])
                extra["entry"].append(_rms((w - w0[n])[kept[n]]) / lr_sum[n] if lr_sum[n] > 0 else float("nan"))
                per_layer[n] = {"probe": parts["update"][-1] / parts["init"][-1], "frob": wr["frob"], "spec": wr["spec"]}
            records.append({"step": t, **{k: float(np.mean(v)) for k, v in parts.items()},
                            "update_over_init": float(np.mean([u / i for u, i in zip(parts["update"], parts["init"])])),
                            "update_over_init_frob": float(np.mean(extra["frob"])),
                            "update_over_init_spec": float(np.mean(extra["spec"])),
                            "update_stable_rank": float(np.mean(extra["stable_rank"])),
                            "update_entry_over_lr_sum": float(np.mean(extra["entry"])),
                            "layers": per_layer})

    loss_fn = run.loss_fn
    for t in range(c["train"]["steps"] + 1):
        if t in steps_at:
            record(t)
        if t == c["train"]["steps"]:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(t)) * group.get("lr_mult", 1.0)
        for n in layers:
            lr_sum[n] += optimizer.param_groups[group_of[n]]["lr"]
        x, y = run.batches.batch(t)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        model.eval()
        val = float(loss_fn(model(run.data.x_test), run.data.y_test))
    return {"records": records, "val_loss": val, "width": int(c["model"]["width"])}


def slope(xs, ys) -> float:
    """log2-log2 least-squares slope; nan with fewer than two distinct xs (one density: no slope)."""
    if len(set(xs)) < 2:
        return float("nan")
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


def _ms(values: list[float]) -> str:
    """'mean ± sample std' of the per-seed values."""
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{np.mean(values):.2f} ± {sd:.2f}"


def report(results: list[dict], parametrizations: list[str], densities: list[float], steps_at: list[int]) -> list[dict]:
    """Print the slope table (slopes of the seed-mean rms against density; update / init at the densest
    and the sparsest density as mean ± sample std over the seeds' ratios) and the final losses; return
    the table's rows."""
    print("log2-log2 slope against density of the mean rms over the sparse hidden layers (0 = invariant); "
          "update/init at density 1 and at the lowest density (mean ± std over seeds)")
    print("| parametrization | step | init slope | update slope | out slope | update/init dense | update/init sparsest |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for p in parametrizations:
        rows = [r for r in results if r["parametrization"] == p]
        for i, t in enumerate(steps_at):
            mean = {d: {k: float(np.mean([r["records"][i][k] for r in rows if r["density"] == d]))
                        for k in ("init", "update", "out", "update_over_init")} for d in densities}
            line = {"parametrization": p, "step": t}
            for k in ("init", "update", "out"):
                vals = [mean[d][k] for d in densities]
                line[k + "_slope"] = slope(densities, vals) if all(v > 0 for v in vals) else float("nan")
            line["ratio_dense"] = mean[max(densities)]["update_over_init"]
            line["ratio_sparse"] = mean[min(densities)]["update_over_init"]
            per_seed = {d: [r["records"][i]["update_over_init"] for r in rows if r["density"] == d]
                        for d in (max(densities), min(densities))}
            line["ratio_dense_seeds"], line["ratio_sparse_seeds"] = per_seed[max(densities)], per_seed[min(densities)]
            table.append(line)
            print(f"| {p} | {t} | {line['init_slope']:+.2f} | {line['update_slope']:+.2f} | {line['out_slope']:+.2f} "
                  f"| {_ms(per_seed[max(densities)])} | {_ms(per_seed[min(densities)])} |")
    print("\nfinal validation loss, mean ± std over seeds")
    for p in parametrizations:
        cells = []
        for d in densities:
            v = [r["val_loss"] for r in results if r["parametrization"] == p and r["density"] == d]
            cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else math.nan:.3f}")
        print(f"| {p} | " + " | ".join(cells) + " |")
    return table


NORMS = (("update_over_init", "probe (output rms)"), ("update_over_init_frob", "Frobenius"),
         ("update_over_init_spec", "spectral"))
EXTRA = (("update_entry_over_lr_sum", "Adam entry rms / lr sum"), ("update_stable_rank", "update stable rank"))


def _width_of(run: dict, args: dict) -> int:
    """A run's width: its own key, else the ``model.width=`` override of the JSON's ``--set``, else 64."""
    if "width" in run:
        return int(run["width"])
    for item in args.get("set") or []:
        if item.startswith("model.width="):
            return int(item.split("=", 1)[1])
    return 64


def width_cells(paths: list[str], steps: list[int]) -> dict:
    """{(cell, step, norm): {width: [per-seed ratio]}} over the runs of several JSONs; ``cell`` is
    ``"dense"`` for density 1 (one model under muP, SμPar and the ablations: the first
    parametrization's seeds are used) and ``"<parametrization> <density>"`` otherwise."""
    out: dict = {}
    for cell, width, rec in _records(paths, steps):
        for key, _ in NORMS + EXTRA:
            if key in rec:
                out.setdefault((cell, rec["step"], key), {}).setdefault(width, []).append(rec[key])
    return out


def _records(paths: list[str], steps: list[int]):
    """``(cell, width, record)`` for every record at ``steps`` of the runs in the JSONs at ``paths``
    (the cells of :func:`width_cells`; a dense seed once per width)."""
    for path in paths:
        saved = json.loads(Path(path).read_text())
        seen = set()
        for r in saved["runs"]:
            width = _width_of(r, saved["args"])
            dense = r["density"] == 1.0
            if dense and (width, r["seed"]) in seen:
                continue
            if dense:
                seen.add((width, r["seed"]))
            cell = "dense" if dense else f"{r['parametrization']} {r['density']:g}"
            for rec in r["records"]:
                if rec["step"] in steps:
                    yield cell, width, rec


def matrix_cells(paths: list[str], steps: list[int]) -> dict:
    """{(cell, step, kind, norm): {width: [per-seed ratio, averaged over the blocks]}} from each
    record's ``layers``; ``kind`` is the matrix's name without its block (``attn.qkv``, ``mlp.proj``)."""
    out: dict = {}
    for cell, width, rec in _records(paths, steps):
        kinds: dict = {}
        for name, ratios in rec.get("layers", {}).items():
            kind = ".".join(name.split(".")[2:])
            for norm, value in ratios.items():
                kinds.setdefault((kind, norm), []).append(value)
        for (kind, norm), values in kinds.items():
            out.setdefault((cell, rec["step"], kind, norm), {}).setdefault(width, []).append(float(np.mean(values)))
    return out


def fit_finite_width(widths: list[int], means: list[float]) -> tuple[float, float]:
    """Least-squares ``ratio^2 = A + B / width``: (A, B); sqrt(A) is the width-invariant limit.

    >>> A, B = fit_finite_width([64, 128, 256], [(4 + 256 / w) ** 0.5 for w in (64, 128, 256)])
    >>> round(A, 6), round(B, 6)
    (4.0, 256.0)
    """
    design = np.stack([np.ones(len(widths)), 1.0 / np.asarray(widths, float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(means, float) ** 2, rcond=None)
    return float(a), float(b)


def width_report(paths: list[str], steps: list[int], fig: str | None = None) -> list[dict]:
    """Print, per (cell, step, norm), the ratio at each width (mean ± sample std, per-seed values),
    the log2-log2 slope between successive widths, and the fit of :func:`fit_finite_width`; draw
    ratio against width on log-log axes, one panel per norm and step, if ``fig``."""
    cells = width_cells(paths, steps)
    rows = []
    print("update / init against width: mean ± sample std over seeds [per-seed]; local log2-log2 slopes "
          "between successive widths; fit ratio^2 = A + B / width (limit sqrt(A), B/A, its worst relative error)")
    for (cell, step, key), by_width in sorted(cells.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
        widths = sorted(by_width)
        means = [float(np.mean(by_width[w])) for w in widths]
        local = [float(np.log2(means[i + 1] / means[i]) / np.log2(widths[i + 1] / widths[i]))
                 for i in range(len(widths) - 1)] if all(m > 0 for m in means) else []
        a, b = fit_finite_width(widths, means) if len(widths) >= 2 else (math.nan, math.nan)
        row = {"cell": cell, "step": step, "norm": key, "widths": widths, "means": means,
               "seeds": [by_width[w] for w in widths], "local_slopes": local, "fit_A": a, "fit_B": b}
        rows.append(row)
        name = dict(NORMS + EXTRA)[key]
        vals = "; ".join(f"{w}: {means[i]:.3g}" + (f" ± {np.std(by_width[w], ddof=1):.2g}" if len(by_width[w]) > 1 else "")
                         + " "
                         f"[{', '.join(f'{v:.3g}' for v in by_width[w])}]" for i, w in enumerate(widths))
        limit = f"{math.sqrt(a):.3g}" if a > 0 else "none (A <= 0)"
        fitted = [math.sqrt(max(a + b / w, 0.0)) for w in widths] if len(widths) >= 2 else []
        worst = max((abs(f / m - 1) for f, m in zip(fitted, means) if m > 0), default=math.nan)
        row["fit_worst_rel_error"] = worst
        print(f"| {cell} | {step} | {name} | {vals} | slopes {' / '.join(f'{x:+.2f}' for x in local)} "
              f"| limit {limit}, B/A {b / a if a > 0 else math.nan:.3g}, fit off by <= {100 * worst:.0f}% |")
    per_matrix = matrix_cells(paths, steps)
    if per_matrix:
        print("\nper matrix kind (mean over the blocks, then mean over seeds) at each width; local log2-log2 slopes")
        for (cell, step, kind, norm), by_width in sorted(per_matrix.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
            widths = sorted(by_width)
            means = [float(np.mean(by_width[w])) for w in widths]
            local = [float(np.log2(means[i + 1] / means[i]) / np.log2(widths[i + 1] / widths[i]))
                     for i in range(len(widths) - 1)] if all(m > 0 for m in means) else []
            rows.append({"cell": cell, "step": step, "matrix": kind, "norm": norm, "widths": widths,
                         "means": means, "local_slopes": local})
            print(f"| {cell} | {step} | {kind} | {norm} | " + "; ".join(f"{w}: {m:.3g}" for w, m in zip(widths, means))
                  + f" | slopes {' / '.join(f'{x:+.2f}' for x in local)} |")
    if fig:
        _width_figure([r for r in rows if "matrix" not in r], steps, fig)
    return rows


def _width_figure(rows: list[dict], steps: list[int], fig: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    norm_keys = [k for k, _ in NORMS]
    f, axes = plt.subplots(len(steps), len(norm_keys), figsize=(4.2 * len(norm_keys), 3.3 * len(steps)),
                           squeeze=False)
    cells = sorted({r["cell"] for r in rows}, key=lambda c: (c != "dense", c))
    colors = dict(zip(cells, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for i, step in enumerate(steps):
        for j, key in enumerate(norm_keys):
            ax = axes[i][j]
            for r in rows:
                if r["step"] != step or r["norm"] != key:
                    continue
                w = np.asarray(r["widths"], float)
                sd = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in r["seeds"]]
                ax.errorbar(w, r["means"], yerr=sd, marker="o", ms=3, capsize=2, color=colors[r["cell"]],
                            label=r["cell"])
                for x, vs in zip(w, r["seeds"]):
                    ax.scatter([x] * len(vs), vs, s=6, color=colors[r["cell"]], alpha=0.4)
            ws = np.asarray(sorted({x for r in rows for x in r["widths"]}), float)
            if len(ws) and all(r["means"] and min(r["means"]) > 0 for r in rows if r["step"] == step and r["norm"] == key):
                top = max(max(r["means"]) for r in rows if r["step"] == step and r["norm"] == key)
                ax.plot(ws, top * 1.3 * (ws / ws[0]) ** -0.5, "k:", lw=1, label="width^-1/2")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{dict(NORMS)[key]}, step {step}", fontsize=9)
            ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel("update / init")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    f.suptitle("|update| / |init| of the sparse hidden matrices against width (mean ± std over seeds, dots per seed)",
               fontsize=10)
    f.tight_layout()
    f.savefig(fig, dpi=110)
    print(f"wrote {fig}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parametrizations", default="mup,supar_init,supar_lr,supar")
    ap.add_argument("--densities", default="1,0.125,0.015625")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lr", type=float, default=2 ** -9)
    ap.add_argument("--steps-at", default="0,5,20,50,100,200")
    ap.add_argument("--set", nargs="*", default=["data.vocab_size=512"], help="config overrides key=value")
    ap.add_argument("--out", default=None)
    ap.add_argument("--from-json", default=None, help="print the tables of a JSON this script wrote; run nothing")
    ap.add_argument("--widths-from", nargs="+", default=None, metavar="JSON",
                    help="JSONs of this script at several widths (model.width=): print the update/init ratios "
                         "(output rms, Frobenius, spectral) against width at --steps-at; run nothing")
    ap.add_argument("--fig", default=None, help="with --widths-from: draw the ratios against width (log-log) here")
    args = ap.parse_args()
    if args.widths_from:
        width_report(args.widths_from, [int(s) for s in args.steps_at.split(",")], args.fig)
        return
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        a = saved["args"]
        report(saved["runs"], a["parametrizations"].split(","), [float(d) for d in a["densities"].split(",")],
               [int(s) for s in a["steps_at"].split(",")])
        return
    torch.set_num_threads(1)
    base = dict(cfg.load_config(CONFIG, args.set))
    base.pop("sweep", None)
    steps_at = [int(s) for s in args.steps_at.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    results = []
    started, cpu0 = time.perf_counter(), time.process_time()
    for p in args.parametrizations.split(","):
        for d in densities:
            for s in (int(x) for x in args.seeds.split(",")):
                c = copy.deepcopy(base)
                c["seed"] = s
                c["model"]["parametrization"], c["model"]["density"] = p, d
                c["optimizer"]["lr"] = args.lr
                r = measure(c, steps_at)
                results.append({"parametrization": p, "density": d, "seed": s, **r})
                print(f"{p:10s} density {d:<9g} seed {s}: val loss {r['val_loss']:.4f}", flush=True)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(f"\n{len(results)} runs, {wall:.0f} s wall, {cpu:.0f} s CPU\n")
    table = report(results, args.parametrizations.split(","), densities, steps_at)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "wall_s": wall, "cpu_s": cpu, "runs": results,
                                              "slopes": table}, indent=1))


if __name__ == "__main__":
    main()
