"""``catapult train`` on the small GPT vs a bare PyTorch loop, and ``train.compile`` on the CPU.

The engine: ``catapult.engine.run(config, progress="none")`` (what ``catapult train`` runs, without
writing a run directory) on the Fig. 4 small model (Pre-LN GPT, width 64, 2 blocks, 2 heads,
context 32, GELU, sinusoidal positions, BPE vocab 4096 on the embedded Shakespeare), Adam at a
constant lr, no sharpness, test loss only at the end. Timed: the run minus its ``build_run``
(data and model set-up, which the bare loop also does not time). The bare loop: the same
``build_run`` (same model, same initial weights, same batch stream), ``torch.optim.Adam``, per
step forward, cross-entropy, backward, step, ``loss.item()`` (the engine logs the loss), then
the final forward and test evaluation (loss only). What the bare loop leaves out and the engine
does: the training accuracy of every step, rows, the lr scheduler (4 param groups, all at lr_mult
1, vs one), the final row's loss/accuracy, the collapse check, the test accuracy and the summary.
Both clocks: wall and process CPU time
(``time.process_time``, with one torch thread the steadier figure on a shared host). Each
repetition runs engine, bare, [engine with ``train.compile: true``] in alternating order; the
ratios are per repetition, median and range printed. The final train losses must agree.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_gpt_train.py --reps 3 --steps 150
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import catapult.engine.loop as loop_mod
from catapult.engine import build_run, run

CONFIG = dict(seed=0, data=dict(name="shakespeare", tokenizer="bpe", vocab_size=4096, context=32, n_train=8192,
                                n_test=256),
              model=dict(name="gpt", width=64, depth=2, n_heads=2, activation="gelu", positions="sinusoidal",
                         parametrization="sp"),
              loss="cross_entropy", optimizer=dict(name="adam", lr=1e-3),
              schedule=dict(warmup_steps=1, lr_init=1e-3), train=dict(steps=150, batch_size=16),
              eval=dict(sharpness_every=0, test_every=0))


def timed_engine(config):
    spent = {"build": 0.0, "build_cpu": 0.0}
    real = loop_mod.build_run

    def wrapped(c):
        t, c0 = time.perf_counter(), time.process_time()
        out = real(c)
        spent["build"] += time.perf_counter() - t
        spent["build_cpu"] += time.process_time() - c0
        return out

    loop_mod.build_run = wrapped
    try:
        t, c0 = time.perf_counter(), time.process_time()
        result = run(config, progress="none")
        wall, cpu = time.perf_counter() - t - spent["build"], time.process_time() - c0 - spent["build_cpu"]
    finally:
        loop_mod.build_run = real
    return wall, cpu, result.metrics[-2]["train_loss"]


def timed_bare(config):
    setup = build_run(config)
    model, batches, steps = setup.model, setup.batches, config["train"]["steps"]
    opt = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["lr"])
    ce = torch.nn.functional.cross_entropy
    t, c0 = time.perf_counter(), time.process_time()
    last = None
    for s in range(steps):
        x, y = batches.batch(s)
        logits = model(x)
        loss = ce(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        last = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x, y = batches.batch(steps)
    model(x)
    with torch.no_grad():
        model.eval()
        logits = model(setup.data.x_test)
        ce(logits.reshape(-1, logits.shape[-1]), setup.data.y_test.reshape(-1)).item()
    return time.perf_counter() - t, time.process_time() - c0, last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    config = dict(CONFIG, train=dict(CONFIG["train"], steps=args.steps))
    compiled = dict(config, train=dict(config["train"], compile=True))
    tokens = args.steps * 16 * 32
    timed_engine(config)  # warm-up: tokenizer cache, imports
    kinds = ["engine", "bare"] + ([] if args.no_compile else ["compile"])
    rows = {k: [] for k in kinds}
    for rep in range(args.reps):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        for kind in order:
            fn = {"engine": lambda: timed_engine(config), "bare": lambda: timed_bare(config),
                  "compile": lambda: timed_engine(compiled)}[kind]
            rows[kind].append(fn())
    losses = {k: v[0][2] for k, v in rows.items()}
    assert abs(losses["engine"] - losses["bare"]) <= 1e-5 * abs(losses["bare"]), losses
    for k in kinds:
        wall = statistics.median(r[0] for r in rows[k])
        cpu = statistics.median(r[1] for r in rows[k])
        print(f"{k:8s} wall {wall:6.2f} s ({tokens / wall:8.0f} tokens/s)  cpu {cpu:6.2f} s ({tokens / cpu:8.0f} "
              f"tokens/s)  final train loss {losses[k]:.5f}")
    for k in [k for k in kinds if k != "bare"]:
        for i, clock in ((0, "wall"), (1, "cpu")):
            ratios = [a[i] / b[i] for a, b in zip(rows[k], rows["bare"])]
            print(f"{k} / bare ({clock}): median {statistics.median(ratios):.3f}, range "
                  f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} reps")


if __name__ == "__main__":
    main()
