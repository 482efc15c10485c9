"""Markers for tests of features newer than torch 2.2, the oldest torch pyproject.toml accepts:
on an older torch catapult refuses them with a message naming the version (checked where it
does), and the tests that use them skip, saying why."""
from __future__ import annotations

import pytest


def has_fsdp2() -> bool:
    """FSDP2's public names (torch 2.6 and later)."""
    import importlib

    try:
        fsdp = importlib.import_module("torch.distributed.fsdp")
        tensor = importlib.import_module("torch.distributed.tensor")
    except ImportError:
        return False
    return all(hasattr(fsdp, n) for n in ("fully_shard", "FSDPModule")) and hasattr(tensor, "DTensor")


FSDP2 = pytest.mark.skipif(not has_fsdp2(), reason="needs FSDP2 (torch.distributed.fsdp.fully_shard, "
                                                   "torch.distributed.tensor): torch 2.6 or later")

