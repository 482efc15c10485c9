"""WRN-16-4 speed: the engine's training step vs a bare PyTorch loop, the augmentation's cost,
and the sharpness of WRN-16-4 on a batch (HVPs and seconds to tol 1e-3).

1. ``step``: ``catapult.engine.run`` vs the bare loop of ``bench/bench_engine_overhead.py``
   (same model and initial weights from ``build_run``, same data and batches, ``torch.optim.SGD``
   over ``model.parameters()``; forward, loss, ``.item()``, backward, step), on WRN-16-4 (SP) with
   CIFAR-sized inputs: a throw-away CIFAR-10 folder of random images in the official format is
   written to a temporary directory (no CIFAR files are needed). Median step time inside a run
   (CPU seconds of this process, the steady figure on a shared host) and the ratio engine /
   bare per repetition, order alternating. No augmentation here (the bare loop has none).
2. ``augment``: ``Augment(flip, crop 4, mixup 1.0)`` on one ``(batch, 3, 32, 32)`` batch, best of
   5, as a share of the bare step.
3. ``sharpness``: ``catapult.sharpness`` (Lanczos, double-backprop HVPs, float32, tol 1e-3,
   seeded start vector) of WRN-16-4 (SP, MSE, 10 classes) at init on ``--n`` standard-normal
   CIFAR-shaped inputs with random labels: lambda_max, HVPs, wall and CPU seconds, and one
   gradient's seconds for scale.
4. ``shortcut``: the cost of the three ways a downsampling block's 1x1 stride-2 shortcut has been
   written. Its input, a LayerNorm output, has channels-last strides, and torch 2.13's CPU backward
   of a strided 1x1 conv on such an input corrupted the heap at one thread (2f83d3e): ``strided``
   (the conv on ``x``, before 2f83d3e; it may crash at one thread on an affected host), ``copy``
   (on ``x.contiguous()``, 2f83d3e) and ``subsampled`` (a stride-1 conv of ``x[..., ::2, ::2]``,
   the model as shipped). Forward + backward (cross-entropy) of the studies' WRN-10-1
   (fig3_wrn_small / table1_wrn_small: trunc_normal, SP, CIFAR 3x32x32, batch 64) and of WRN-16-4
   at ``--batch``, same weights and inputs. Median CPU seconds of ``--steps`` passes after one
   warm-up, the order rotating per repetition, and the ratios subsampled / the others per
   repetition; the gradients are compared.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_wrn.py                 # batch 16, n 64 (CPU)
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_wrn.py --quick         # smoke test
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_wrn.py --only sharpness --n 1000 --chunk 125
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_wrn.py --only shortcut --steps 10 --reps 6
    PYTHONPATH=src python bench/bench_wrn.py --device cuda --batch 128 --n 1000 --steps 50   # GPU
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine_overhead as overhead  # noqa: E402  (the bare loop and the stamps, shared)

from catapult.curvature import sharpness  # noqa: E402
from catapult.data import Augment  # noqa: E402
from catapult.losses import mse  # noqa: E402
from catapult.models import WRN  # noqa: E402


def fake_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> Path:
    """A ``cifar-10-batches-py/`` folder of random uint8 images in the official format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n, title):
        return {b"batch_label": title, b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, size=n).tolist(), b"filenames": [b"x.png"] * n}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch, b"training"), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, b"testing"), protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"num_vis": 3072, b"label_names": [b"c%d" % k for k in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def step_config(root: Path, batch: int, steps: int, device: str) -> dict:
    return {"name": "bench-wrn", "seed": 0, "device": device,
            "data": {"name": "cifar10", "root": str(root), "n_test": 32},
            "model": {"name": "wrn", "depth": 16, "widen": 4, "parametrization": "sp"},
            "loss": "cross_entropy",
            "optimizer": {"name": "sgd", "lr": 0.01},
            "schedule": {"warmup_steps": 1, "lr_init": 0.01},
            "train": {"steps": steps, "batch_size": batch},
            "eval": {"sharpness_every": 0, "test_every": 0}}


def bench_step(batch: int, steps: int, reps: int, device: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_cifar10(Path(tmp), per_batch=max(batch, 64), n_test=32)
        config = step_config(root, batch, steps, device)
        ratios, engine_steps, bare_steps = [], [], []
        for rep in range(reps):
            order = ("engine", "bare") if rep % 2 == 0 else ("bare", "engine")
            got = {}
            for kind in order:
                got[kind] = overhead.time_engine(config) if kind == "engine" else overhead.time_bare(config, item=True)
            assert abs(got["engine"][2] - got["bare"][2]) <= 1e-5 * abs(got["bare"][2]), (got["engine"][2], got["bare"][2])
            (_, (_, e_cpu), _), (_, (_, b_cpu), _) = got["engine"], got["bare"]
            engine_steps.append(e_cpu)
            bare_steps.append(b_cpu)
            ratios.append(e_cpu / b_cpu)
            print(f"  rep {rep}: engine step {e_cpu:.3f} s, bare step {b_cpu:.3f} s, ratio {e_cpu / b_cpu:.3f}",
                  flush=True)
        print(f"step (CPU s, median of {reps}): engine {statistics.median(engine_steps):.3f}, bare "
              f"{statistics.median(bare_steps):.3f}, engine/bare median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")
        return statistics.median(bare_steps), statistics.median(ratios)


def bench_augment(batch: int, device: str, bare_step: float) -> None:
    aug = Augment(flip=True, crop=4, mixup=1.0, num_classes=10, seed=0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    aug(x, y, step=0)
    best = float("inf")
    for t in range(5):
        start = time.process_time()
        aug(x, y, step=t)
        best = min(best, time.process_time() - start)
    print(f"augment (flip + crop 4 + mixup) of a {batch}x3x32x32 batch: {best * 1e3:.2f} ms CPU, "
          f"{100 * best / bare_step:.2f}% of the bare step")


def bench_sharpness(n: int, device: str, chunk: int | None = None) -> None:
    torch.manual_seed(0)
    model = WRN(3, 10, depth=16, widen=4, parametrization="sp").to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    start_w, start_c = time.perf_counter(), time.process_time()
    step = chunk or n
    for i in range(0, n, step):  # one gradient of the mean loss, over the same micro-batches
        (mse(model(x[i:i + step]), y[i:i + step]) * (len(x[i:i + step]) / n)).backward()
    grad_w, grad_c = time.perf_counter() - start_w, time.process_time() - start_c
    model.zero_grad(set_to_none=True)
    start_w, start_c = time.perf_counter(), time.process_time()
    est = sharpness(model, mse, (x, y), tol=1e-3, max_iter=100, seed=0, chunk_size=chunk)
    wall, cpu = time.perf_counter() - start_w, time.process_time() - start_c
    print(f"sharpness WRN-16-4 ({n_params:,} parameters), n = {n}, MSE, fp32, tol 1e-3: lambda_max "
          f"{est.value:.5g}, {est.matvecs} HVPs, converged {est.converged}, residual {est.residual:.2e}, "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU ({wall / max(est.matvecs, 1):.2f} s per HVP; one gradient "
          f"{grad_w:.2f} s wall, {grad_c:.2f} s CPU); chunk {chunk}, coarse matvecs "
          f"{getattr(est, 'coarse_matvecs', 0)}, peak RSS {peak_rss_gib():.2f} GiB")


def _forward_strided(block, x: torch.Tensor, copy: bool) -> torch.Tensor:
    """A WRN block's forward with its shortcut as a strided 1x1 conv: on ``x`` itself (before
    2f83d3e) or on ``x.contiguous()`` (2f83d3e until the subsampled shortcut)."""
    h = F.relu(block.norm1(block.conv1(x)))
    h = block.norm2(block.conv2(h))
    if block.shortcut is None:
        return F.relu(h + x)
    conv = block.shortcut
    skip = F.conv2d(x.contiguous() if copy else x, conv.weight, None, stride=block.shortcut_stride)
    return F.relu(h + block.shortcut_norm(skip * conv.multiplier))


SHORTCUTS = ("subsampled", "copy", "strided")


def bench_shortcut(batch: int, steps: int, reps: int, device: str) -> None:
    for title, depth, widen, n in (("WRN-10-1", 10, 1, 64), ("WRN-16-4", 16, 4, batch)):
        torch.manual_seed(0)
        model = WRN(3, 10, depth=depth, widen=widen, parametrization="sp", init="trunc_normal").to(device)
        blocks = [m for m in model.modules() if getattr(m, "shortcut", None) is not None]
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (n,), generator=gen).to(device)

        def passes(kind: str) -> tuple[float, list[torch.Tensor]]:
            for block in blocks:
                block.__dict__.pop("forward", None)     # the class's forward: the subsampled view
                if kind != "subsampled":
                    block.forward = types.MethodType(
                        lambda blk, inp, copy=(kind == "copy"): _forward_strided(blk, inp, copy), block)
            times = []
            for i in range(steps + 1):
                model.zero_grad(set_to_none=True)
                start = time.process_time()
                F.cross_entropy(model(x), y).backward()
                if device != "cpu":
                    torch.cuda.synchronize()
                if i:   # the first pass warms up
                    times.append(time.process_time() - start)
            return statistics.median(times), [p.grad.clone() for p in model.parameters()]

        times = {kind: [] for kind in SHORTCUTS}
        ratios = {kind: [] for kind in SHORTCUTS[1:]}
        for rep in range(reps):
            got = {}
            for kind in SHORTCUTS[rep % 3:] + SHORTCUTS[:rep % 3]:     # the order rotates
                got[kind] = passes(kind)
            for kind in SHORTCUTS:
                times[kind].append(got[kind][0])
            for kind in SHORTCUTS[1:]:
                ratios[kind].append(got["subsampled"][0] / got[kind][0])
            gap = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                      for a, b in zip(got["subsampled"][1], got["strided"][1]))
            print(f"  {title} rep {rep}: " + ", ".join(f"{k} {got[k][0] * 1e3:.1f} ms" for k in SHORTCUTS)
                  + f"; gradients' largest relative gap, subsampled vs strided {gap:.1e}", flush=True)
        print(f"shortcut, {title} batch {n}, forward + backward (CPU ms, median of {reps}): "
              + ", ".join(f"{k} {statistics.median(times[k]) * 1e3:.1f}" for k in SHORTCUTS)
              + "; subsampled / " + ", subsampled / ".join(
                  f"{k} median {statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f})" for k, r in ratios.items()))


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux ``ru_maxrss`` is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="training batch of the step benchmark")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed run")
    parser.add_argument("--reps", type=int, default=4, help="repetitions (ratio per repetition)")
    parser.add_argument("--n", type=int, default=64, help="inputs of the sharpness batch (the paper-scale figure: 1000)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="sharpness micro-batch (HVPs over chunks; ~30 MB per sample per chunk on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="batch 4, 3 steps, 2 reps, n 8")
    parser.add_argument("--only", choices=["step", "sharpness", "shortcut"], default=None,
                        help="run one part (step = step + augment; sharpness alone takes ~25 min CPU at n 1000; "
                             "shortcut: the block's contiguous copy, with / without)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.reps, args.n = 4, 3, 2, 8
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; batch "
          f"{args.batch}, {args.steps} steps x {args.reps} reps; sharpness n = {args.n}", flush=True)
    if args.only in (None, "step"):
        bare_step, _ = bench_step(args.batch, args.steps, args.reps, args.device)
        bench_augment(args.batch, args.device, bare_step)
    if args.only in (None, "sharpness"):
        bench_sharpness(args.n, args.device, args.chunk)
    if args.only in (None, "shortcut"):
        bench_shortcut(args.batch, args.steps, args.reps, args.device)


if __name__ == "__main__":
    main()
