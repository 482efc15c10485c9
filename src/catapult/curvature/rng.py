"""One dropout mask for every forward of a curvature solve, and the caller's random stream left
as it was: the solvers' products must all see the same function of the parameters."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["fixed_rng"]


@contextlib.contextmanager
def fixed_rng(seed: int, device: torch.device):
    """Seed the generator(s) a forward pass on ``device`` may draw from (dropout) and restore
    the global RNG state afterwards, so every forward in one solve sees the same dropout mask
    and the caller's random stream is untouched.

    Example:
        >>> with fixed_rng(0, torch.device("cpu")):
        ...     first = torch.rand(3)
        >>> with fixed_rng(0, torch.device("cpu")):
        ...     second = torch.rand(3)
        >>> torch.equal(first, second)
        True
    """
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(cuda_devices[0]):
                torch.cuda.manual_seed(seed)
        yield
