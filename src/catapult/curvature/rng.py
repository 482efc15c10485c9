"""One dropout mask for every forward of a curvature solve, and the caller's random stream left
as it was: the solvers' products must all see the same function of the parameters."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["fixed_rng"]


@contextlib.contextmanager
def fixed_rng(seed: int, device: torch.device):
    """Seed the generator(s) a forward pass on ``device`` may draw from (dropout), and NumPy's
    global generator and Python's ``random`` (a noise layer written with ``np.random``), and
    restore all their states afterwards, so every forward in one solve sees the same dropout mask
    and the same host draws, and the caller's random streams are untouched. (A generator the
    model holds itself, ``np.random.default_rng()`` or a ``torch.Generator``, is not reached.)

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
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.default_generator.manual_seed(seed)
            if cuda_devices:
                with torch.cuda.device(cuda_devices[0]):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed % 2 ** 32)   # NumPy takes [0, 2**32); torch's seeds reach [-2**63, 2**64)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
