"""Probe: the memory of the batched engines' float64 check of a float32 pre-conditioned solve
(``batched_loop.certified_members``) against the solve's and against the memory estimate.

Runs one group of ``--members`` Adam cells (digits MLP, float32, ``sharpness_tol`` 1e-7 so that every
member's mark is checked in float64) on the hand-derived kernels and on the torch.func engine, and
samples glibc's bytes in use (``mallinfo2``: ``uordblks + hblkhd``, which torch's CPU allocator goes
through) every 0.2 ms from a thread, from the entry of the stack's ``sharpness`` (the baseline: the
training state alive) through the solve and the check. Prints per engine the peaks above the baseline
in the solve and in the check, and the estimate's sharpness term for the group (func:
``func_member_bytes`` with sharpness less without; kernels: ``member_bytes``'s ``P (max_basis + 4)``
vectors and its activations' share, ``n_batch x sum(widths) x 8``, which also covers training).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_check_memory.py [--members 4] [--width 256] [--n-train 1000]
"""
from __future__ import annotations

import argparse
import ctypes
import threading
import time


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = MallInfo2


def in_use() -> int:
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class Sampler:
    """The largest bytes in use per phase, sampled from a thread."""

    def __init__(self):
        self.phase, self.peaks, self.base, self._stop = None, {}, None, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            self.note()
            time.sleep(0.0002)

    def note(self):
        phase = self.phase
        if phase is not None:
            self.peaks[phase] = max(self.peaks.get(phase, 0), in_use())

    def enter(self, phase):
        self.note()
        self.phase = phase
        self.note()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=1000)
    args = parser.parse_args()
    from catapult import config as cfg
    from catapult.sweep import batched, ensemble, ensemble_run
    from catapult.sweep.batched_memory import chunk_members
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.executors import Cell

    sampler = Sampler()
    checked = {"n": 0}

    def wrap_sharpness(cls):
        inner = cls.sharpness

        def sharpness(self, *a, kind="hessian", **k):
            if kind != "preconditioned":
                return inner(self, *a, kind=kind, **k)
            sampler.enter(None)
            sampler.base = min(in_use(), sampler.base or 1 << 62)
            sampler.enter("solve")
            try:
                return inner(self, *a, kind=kind, **k)
            finally:
                sampler.enter(None)
        cls.sharpness = sharpness

    def wrap_certified(module):
        inner = module.certified_members

        def certified_members(ests, d, gradient, tols, product):
            def counted(positions, Y):
                checked["n"] += len(positions)
                out = product(positions, Y)
                sampler.note()
                return out
            sampler.enter("check")
            return inner(ests, d, gradient, tols, counted)
        module.certified_members = certified_members

    wrap_sharpness(batched.FuncStack)
    wrap_sharpness(ensemble_run.KernelStack)
    wrap_certified(batched)
    wrap_certified(ensemble_run)

    def cell(seed):
        return Cell(seed, cfg.validate({
            "name": f"s{seed}", "seed": seed, "data": {"name": "digits", "n_train": args.n_train, "n_test": 32},
            "model": {"name": "mlp", "width": args.width, "depth": 3, "parametrization": "sp"}, "loss": "mse",
            "optimizer": {"name": "adam", "lr": 0.001}, "train": {"steps": 0, "batch_size": None},
            "eval": {"sharpness_every": 1, "sharpness_tol": 1e-7, "test_every": 0}}))

    cells = [cell(s) for s in range(args.members)]
    config = cells[0].config
    from catapult import engine
    data = engine.load_data(config)
    n_batch = args.n_train
    dims = [data.in_features, args.width, args.width, data.num_classes]
    n_params = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(3))
    no_sharp = dict(config, eval=dict(config["eval"], sharpness_every=0))
    print(f"{args.members} members, width {args.width}, {n_batch} samples, {n_params} parameters each")
    for name, kernels in (("kernels", True), ("func", False)):
        sampler.peaks, sampler.base, checked["n"] = {}, None, 0
        ex = EnsembleExecutor(kernels=kernels)
        rows = dict(ex.run(cells))
        assert not ex.fallbacks, ex.fallbacks
        if kernels:
            est = args.members * (ensemble.member_bytes(config, data.in_features, data.num_classes, n_batch, 32)
                                  - ensemble.member_bytes(no_sharp, data.in_features, data.num_classes, n_batch, 32))
            acts = args.members * 4 * n_batch * sum(dims[1:]) * 8
            what = f"estimate's Lanczos vectors {est / 2**20:.1f} MiB, its activations {acts / 2**20:.1f} MiB"
        else:
            full = chunk_members(config, data, 1 << 62)[1]
            bare = chunk_members(no_sharp, data, 1 << 62)[1]
            what = f"estimate's sharpness term {args.members * (full - bare) / 2**20:.1f} MiB"
        solve = (sampler.peaks.get("solve", 0) - sampler.base) / 2**20
        check = (sampler.peaks.get("check", 0) - sampler.base) / 2**20
        marks = [rows[c.id].metrics[0]["sharpness_converged"] for c in cells]
        print(f"{name}: members checked in float64 {checked['n']}, marks {marks}; above the baseline: solve "
              f"{solve:.1f} MiB, check {check:.1f} MiB; {what}", flush=True)
    sampler._stop = True


if __name__ == "__main__":
    main()
