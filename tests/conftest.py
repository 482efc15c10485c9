"""Shared fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny models: faster, and much faster on a shared 2-core box
    (two threads fighting a busy core cost 30x on a small GPT). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
