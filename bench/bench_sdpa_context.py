"""Cost of restricting scaled_dot_product_attention to its math kernel inside HVPs.

catapult.curvature wraps every forward of a Hessian-vector product in
``sdpa_kernel([SDPBackend.MATH])`` (:func:`catapult.curvature.hessian.math_attention`; the fused
CPU kernel has no double backward). This measures the HVP time of the Fig. 1 FCN (no attention:
the context's pure overhead) with and without the context, both HVP modes, 1 thread, medians of
``--reps`` interleaved repetitions of 5 HVPs.

    .venv/bin/python bench/bench_sdpa_context.py
"""
import argparse
import contextlib
import statistics
import time

import torch

import catapult.curvature.hessian as hessian
from catapult.losses import mse
from catapult.models import MLP


def main(reps: int = 3, n: int = 1000) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLP(3072, 10, width=512, depth=4, parametrization="sp")
    x, y = torch.randn(n, 3072), torch.randint(0, 10, (n,))
    real = hessian.math_attention  # looked up by name at every product, so swapping it works
    res = {}
    try:
        for _ in range(reps):
            for name, ctx in (("without", contextlib.nullcontext), ("with math-kernel context", real)):
                hessian.math_attention = ctx
                for mode in ("double_backprop", "forward_over_reverse"):
                    op = hessian.HessianOperator(model, mse, (x, y), hvp=mode)
                    v = torch.randn(op.numel)
                    op(v)
                    t = time.perf_counter()
                    for _ in range(5):
                        op(v)
                    res.setdefault((name, mode), []).append((time.perf_counter() - t) / 5)
    finally:
        hessian.math_attention = real
    for k, v in res.items():
        print(k, f"{1000 * statistics.median(v):.1f} ms per HVP")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median)")
    parser.add_argument("--n", type=int, default=1000, help="samples in the batch")
    args = parser.parse_args()
    main(args.reps, args.n)
