"""Cost of restricting scaled_dot_product_attention to its math kernel inside HVPs.

catapult.curvature wraps every forward of a Hessian-vector product in
``sdpa_kernel([SDPBackend.MATH])`` (the fused CPU kernel has no double backward). This measures
the HVP time of the Fig. 1 FCN (no attention: the context's pure overhead) with and without
the context, both HVP modes, 1 thread, medians of 3 interleaved repetitions of 5 HVPs.

    .venv/bin/python bench/bench_sdpa_context.py
"""
import contextlib, time, statistics, torch
import catapult.curvature as C
from catapult.losses import mse
from catapult.models import MLP
torch.set_num_threads(1); torch.manual_seed(0)
model = MLP(3072, 10, width=512, depth=4, parametrization="sp")
x = torch.randn(1000, 3072); y = torch.randint(0, 10, (1000,))
real = C._math_attention
res = {}
for rep in range(3):
    for name, ctx in (("without", contextlib.nullcontext), ("with math-kernel context", real)):
        C._math_attention = ctx
        for mode in ("double_backprop", "forward_over_reverse"):
            op = C.HessianOperator(model, mse, (x, y), hvp=mode); v = torch.randn(op.numel); op(v)
            t = time.perf_counter()
            for _ in range(5): op(v)
            res.setdefault((name, mode), []).append((time.perf_counter() - t) / 5)
C._math_attention = real
for k, v in res.items(): print(k, f"{1000*statistics.median(v):.1f} ms per HVP")
