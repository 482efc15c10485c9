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


def scheduler_refills_tensor_lr() -> bool:
    """Whether torch's LR schedulers write a step's lr into a tensor ``lr`` in place (newer torch)
    rather than replacing it with a float (torch 2.2)."""
    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=torch.tensor(0.1))
    lr = optimizer.param_groups[0]["lr"]
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    return optimizer.param_groups[0]["lr"] is lr


TENSOR_LR_SCHEDULER = pytest.mark.skipif(
    not scheduler_refills_tensor_lr(),
    reason="torch's LR schedulers replace a tensor lr with a float (torch 2.2); newer ones refill it in place, "
           "as catapult's StepLRs does")
