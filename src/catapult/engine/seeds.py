"""A run's three random streams, derived from its one ``seed`` (the rule in
:mod:`catapult.engine.loop`'s docstring): the model's initial weights, the batch order, and the
eigen-solvers' random vectors (the first start vector and the probes of the spectrum columns)."""
from __future__ import annotations

import numpy as np

__all__ = ["seeds"]


def seeds(seed: int) -> tuple[int, int, int]:
    """``(init_seed, data_seed, sharpness_seed)``: independent 32-bit streams derived from ``seed``
    by ``numpy.random.SeedSequence(seed).generate_state(3)``.

    >>> seeds(0) == seeds(0), len(set(seeds(0))), seeds(0) != seeds(1)
    (True, 3, True)
    """
    a, b, c = np.random.SeedSequence(seed).generate_state(3)
    return int(a), int(b), int(c)
