"""Shared fixtures."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) the workers share the cores: each
    takes its share of intra-op threads, so two workers on two cores do not run four threads."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // int(workers)))


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
