"""The step semantics both engines share (the local loop in :mod:`catapult.engine.loop` and
the batched engines in :mod:`catapult.sweep`): a row's shape, the divergence rule and when a
step measures sharpness or evaluates on the test set. Each is a small pure function so a
batched engine applies exactly the local rule to each member.
"""
from __future__ import annotations

import math
from typing import Any

from catapult.engine.records import METRIC_COLUMNS

__all__ = ["new_row", "diverged", "measures_sharpness", "evaluates_test"]


def new_row(t: int, lr: float, threshold: float) -> dict[str, Any]:
    """Row ``t`` before the forward pass: every :data:`METRIC_COLUMNS` key, unmeasured ones None.

    >>> row = new_row(3, 0.5, 4.0)
    >>> row["step"], row["lr"], row["threshold"], row["train_loss"]
    (3, 0.5, 4.0, None)
    """
    row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
    row.update(step=t, lr=lr, threshold=threshold)
    return row


def diverged(loss_t: float, loss_0: float, factor: float) -> bool:
    """The divergence rule: ``L_t`` is not finite, or ``L_t > factor * L_0`` (when ``L_0 > 0``).

    >>> diverged(float("nan"), 1.0, 1000), diverged(2000.0, 1.0, 1000), diverged(999.0, 1.0, 1000)
    (True, True, False)
    """
    return not math.isfinite(loss_t) or (loss_0 > 0 and loss_t > factor * loss_0)


def measures_sharpness(t: int, every: int, steps: int) -> bool:
    """Sharpness at step ``t``: every ``every`` steps (0 = never) and at the final step ``steps``.

    >>> [t for t in range(11) if measures_sharpness(t, 4, 10)]
    [0, 4, 8, 10]
    """
    return every > 0 and (t % every == 0 or t == steps)


def evaluates_test(t: int, every: int, steps: int) -> bool:
    """Test loss/accuracy at step ``t``: every ``every`` steps (0 = only at the end) and at ``steps``.

    >>> [t for t in range(11) if evaluates_test(t, 0, 10)], [t for t in range(11) if evaluates_test(t, 5, 10)]
    ([10], [0, 5, 10])
    """
    return t == steps or (every > 0 and t % every == 0)
