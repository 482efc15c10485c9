"""Shared fixtures."""
from __future__ import annotations

import os


def _worker_threads() -> int | None:
    """Under pytest-xdist (``make test`` runs ``-n auto``) the workers share the cores: each
    worker's share of them, or None outside xdist."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(workers))


# NumPy's OpenBLAS (the tests' dense eigvalsh/eigh, SciPy's too) reads its thread count when it is
# loaded, which is after this file: without it two workers on two cores ran four BLAS threads,
# whose spin-waits cost 28% more CPU on the dense-Hessian files (bench/RESULTS.md, "Test suite").
# Set before torch is imported (it may load NumPy); subprocesses the tests start inherit it.
if _worker_threads() is not None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(_worker_threads()))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    """Each xdist worker takes its share of intra-op threads, so two workers on two cores do not
    run four threads."""
    threads = _worker_threads()
    if threads is not None:
        torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny models: faster, and much faster on a shared 2-core box
    (two threads fighting a busy core cost 30x on a small GPT). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lean_chunks_small_batches(monkeypatch):
    """``memory="lean"`` cut by its relative rule alone (no 1 MiB floor,
    ``catapult.curvature.lean.LEAN_MIN_CHUNK_BYTES = 0``): the tiny models of the tests then
    run lean's micro-batched paths, as a model whose activations are megabytes does."""
    from catapult.curvature import lean

    monkeypatch.setattr(lean, "LEAN_MIN_CHUNK_BYTES", 0)
