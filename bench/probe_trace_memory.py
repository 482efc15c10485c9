"""Probe: one ``catapult.hessian_trace`` call (Hutch++) on the Fig. 1 FCN (n = 1000, MSE,
float32): the estimate, CPU seconds and the peak resident memory above the set-up (VmHWM,
this process), so that two versions of the code can be compared in fresh processes:

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_trace_memory.py [--matvecs 60] [--n 1000]
    PYTHONPATH=/tmp/oldsrc/src OMP_NUM_THREADS=1 .venv/bin/python bench/probe_trace_memory.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matvecs", type=int, default=60)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    import catapult
    from bench_sharpness import make_batch, make_model, mse

    model, batch = make_model("sp"), make_batch(args.n)
    # reset the high-water mark to the current RSS (Linux: write 5 to clear_refs)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = vm("VmRSS")
    start = time.process_time()
    trace = catapult.hessian_trace(model, mse, batch, matvecs=args.matvecs)
    cpu = time.process_time() - start
    params = sum(p.numel() for p in model.parameters()) * 4 / 2 ** 20
    print(f"{catapult.__file__}: trace {trace:.6g}, {cpu:.1f} CPU s, peak {vm('VmHWM') - base:.0f} MiB above "
          f"set-up ({(vm('VmHWM') - base) / params:.1f} parameter-sized vectors of {params:.2f} MiB)")


if __name__ == "__main__":
    main()
