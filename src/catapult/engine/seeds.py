"""A run's three random streams, derived from its one ``seed`` (the rule in
:mod:`catapult.engine.loop`'s docstring): the model's initial weights, the batch order, and the
eigen-solvers' random vectors (the first start vector and the probes of the spectrum columns)."""
from __future__ import annotations

import numpy as np

__all__ = ["seeds", "forward_seed"]


def seeds(seed: int) -> tuple[int, int, int]:
    """``(init_seed, data_seed, sharpness_seed)``: independent 32-bit streams derived from ``seed``
    by ``numpy.random.SeedSequence(seed).generate_state(3)``.

    >>> seeds(0) == seeds(0), len(set(seeds(0))), seeds(0) != seeds(1)
    (True, 3, True)
    """
    a, b, c = np.random.SeedSequence(seed).generate_state(3)
    return int(a), int(b), int(c)


def forward_seed(seed: int) -> int:
    """The seed of the stream a model's forward draws from while it trains (a train-mode Dropout of
    a model of yours; catapult's own models draw nothing): the fourth word of the same
    ``SeedSequence(seed)``, independent of :func:`seeds`' three, which it leaves as they were.

    >>> forward_seed(0) == forward_seed(0), forward_seed(0) in seeds(0), forward_seed(0) != forward_seed(1)
    (True, False, True)
    """
    return int(np.random.SeedSequence(seed).generate_state(4)[3])
