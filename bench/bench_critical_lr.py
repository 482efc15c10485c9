"""Critical-lr search and persistent catapult warmup: what they find and what they cost.

Problem: f(x) = V relu(U x / sqrt(d)) / sqrt(width), width 256, 64 Gaussian inputs (d = 16),
one-hot targets (4 classes), MSE 0.5 * mean, full-batch GD, float64, seeds 0..3.

Reports, per seed:
* SGD: lr_c from ``critical_lr`` against 2 / lambda_0 (lambda_0 = ``catapult.sharpness``);
* Adam / GI-Adam first step: lr_c (delta = 0.01) and the pre-conditioned sharpness;
* ``PersistentCatapultWarmup`` to lr_target = 200 (~4 lr_c; constant 200 diverges): steps to
  reach the target, searches, forward passes, with and without warm-started re-searches.

Run: .venv/bin/python bench/bench_critical_lr.py   (about 10 s on one CPU core)
"""
from __future__ import annotations

import argparse
import math
import statistics

import os
import sys

import torch

from catapult import critical_lr, preconditioned_sharpness, schedules, sharpness
from catapult.optim import GIAdam

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from warmup_problems import catapult_problem, half_mse as mse  # noqa: E402  (the tests' problem)


def problem(seed):
    """The tests' wide two-layer catapult problem (tests/warmup_problems.py), width 256."""
    return catapult_problem(seed, width=256)



def gd(model, batch, steps, *, lr=None, pcw=None):
    opt = pcw.optimizer if pcw is not None else torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = mse(model(batch[0]), batch[1])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e3 * losses[0]:
            return "diverged", losses
        opt.zero_grad()
        loss.backward()
        if pcw is not None:
            pcw.step(batch, loss=loss)
        opt.step()
    return "finished", losses


def mean_sd(values) -> str:
    """``mean ± sample std`` (n - 1) of ``values``."""
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def main():
    torch.set_num_threads(1)
    ratios, passes, gi_ratios, p_ratios = [], [], [], []
    print("| seed | lambda_0 | 2/lambda_0 | SGD lr_c | lr_c*lambda_0/2 | passes "
          "| Adam lr_c | GI-Adam lr_c | ratio | Adam P-sharp | GI-Adam P-sharp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in range(4):
        model, batch = problem(seed)
        lam = sharpness(model, mse, batch, tol=1e-6).value
        sgd = critical_lr(model, mse, batch, torch.optim.SGD(model.parameters(), lr=0.0))
        adam_opt, gi_opt = torch.optim.Adam(model.parameters()), GIAdam(model.parameters())
        adam = critical_lr(model, mse, batch, adam_opt, delta=0.01)
        gi = critical_lr(model, mse, batch, gi_opt, delta=0.01)
        p_adam = preconditioned_sharpness(model, mse, batch, adam_opt, tol=1e-6).value
        p_gi = preconditioned_sharpness(model, mse, batch, gi_opt, tol=1e-6).value
        ratios.append(sgd.lr * lam / 2)
        passes.append(sgd.forward_passes)
        gi_ratios.append(gi.lr / adam.lr)
        p_ratios.append(p_adam / p_gi)
        print(f"| {seed} | {lam:.4g} | {2 / lam:.4g} | {sgd.lr:.4g} | {sgd.lr * lam / 2:.2f} "
              f"| {sgd.forward_passes} | {adam.lr:.4g} | {gi.lr:.4g} | {gi.lr / adam.lr:.1f} "
              f"| {p_adam:.4g} | {p_gi:.4g} |")
    print(f"\nOver the 4 seeds (mean ± std): SGD lr_c * lambda_0 / 2 = {mean_sd(ratios)}, "
          f"forward passes {mean_sd(passes)}; GI-Adam / Adam first-step lr_c = {mean_sd(gi_ratios)} "
          f"(1/sqrt(1-b2) = {1 / math.sqrt(1 - 0.999):.4g}); Adam / GI-Adam P-sharpness = "
          f"{mean_sd(p_ratios)}")
    print()
    print("| seed | constant lr 200 | warm start | reached at step | searches | forward passes "
          "| passes/search | loss step 0 -> 120 |")
    print("|---|---|---|---|---|---|---|---|")
    reached_at, per_search = {False: [], True: []}, {False: [], True: []}
    for seed in range(4):
        status, _ = gd(*problem(seed), 120, lr=200.0)
        for warm in (False, True):
            model, batch = problem(seed)
            pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0),
                                                     model, mse, 200.0, warm_start=warm)
            _, losses = gd(model, batch, 120, pcw=pcw)
            reached = pcw.history[-1]["step"] if pcw.done else "never"
            if pcw.done:
                reached_at[warm].append(reached)
            per_search[warm].append(pcw.forward_passes / pcw.searches)
            print(f"| {seed} | {status} | {warm} | {reached} | {pcw.searches} "
                  f"| {pcw.forward_passes} | {pcw.forward_passes / pcw.searches:.1f} "
                  f"| {losses[0]:.3g} -> {losses[-1]:.3g} |")

    for warm in (False, True):
        print(f"\nwarm start {warm} (mean ± std over the seeds that reached 200): reached at step "
              f"{mean_sd(reached_at[warm])} ({len(reached_at[warm])} of 4 seeds), forward passes per "
              f"search {mean_sd(per_search[warm])}", end="")
    print()


def scan(multiples=(1, 2, 4, 8, 16), steps=120):
    """Persistent warmup and a constant lr at lr_target = m * (the seed's own SGD lr_c), for each
    multiple m: the rule that places main()'s lr_target = 200 (~4 lr_c), written down in advance,
    with its neighbours, so the one setting main() shows is seen among the others."""
    torch.set_num_threads(1)
    print("| m = lr_target / lr_c | lr_target (mean) | constant lr: diverged | persistent: reached "
          "| reached at step (mean ± std) | persistent: final loss (mean) |")
    print("|---|---|---|---|---|---|")
    for m in multiples:
        targets, diverged, reached, final = [], 0, [], []
        for seed in range(4):
            model, batch = problem(seed)
            target = m * critical_lr(model, mse, batch, torch.optim.SGD(model.parameters(), lr=0.0)).lr
            targets.append(target)
            status, _ = gd(*problem(seed), steps, lr=target)
            diverged += status == "diverged"
            model, batch = problem(seed)
            pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0),
                                                     model, mse, target)
            _, losses = gd(model, batch, steps, pcw=pcw)
            if pcw.done:
                reached.append(pcw.history[-1]["step"])
            final.append(losses[-1])
        steps_text = mean_sd(reached) if len(reached) > 1 else (str(reached[0]) if reached else "-")
        print(f"| {m} | {statistics.mean(targets):.4g} | {diverged} of 4 | {len(reached)} of 4 | {steps_text} "
              f"| {statistics.mean(final):.3g} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", action="store_true",
                        help="lr_target = 1, 2, 4, 8, 16 x each seed's SGD lr_c: constant lr vs persistent warmup")
    if parser.parse_args().scan:
        scan()
    else:
        main()
