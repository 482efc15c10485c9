"""Reading training trajectories: loss catapults.

A *loss catapult* (Lewkowycz et al. 2020; warmup paper Sec. 3) is a transient spike of the
training loss caused by sharpness exceeding the instability threshold ``2/lr``, after which
the network lands in a flatter region: the sharpness ends lower than before the spike.

Operational definition used here (on logged metrics; sharpness is sampled every few steps):

* Running minimum ``m_t = min_{u < t} L_u`` of the training loss.
* A spike starts at the first ``s`` with ``L_s > rise * m_s`` (``rise = 1.5`` by default). It
  ends at the first ``e > s`` with ``L_e <= rise * m_s`` (or at the end of the run); its peak
  is ``argmax_{s <= t < e} L_t``.
* ``sharpness_before`` = the largest sharpness measured in the ``lookback`` steps up to and
  including ``s`` (at least the last measurement at or before ``s``); ``sharpness_after`` =
  the smallest sharpness measured after the peak, before the next spike starts (or the end).
* The spike is a catapult iff ``sharpness_after < (1 - drop) * sharpness_before``
  (``drop = 0.2`` by default): the loss rose and the sharpness then fell.

Spikes in a run that diverged at their end are not catapults (the loss never came back).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from catapult.arguments import check_integer, check_real

__all__ = ["Catapult", "detect_catapults", "is_finite_number"]


@dataclass
class Catapult:
    """One detected catapult: steps ``start``/``peak``/``end`` of the loss spike, the loss
    running minimum before it and its peak, and sharpness before and after."""

    start: int
    peak: int
    end: int | None
    loss_before: float
    loss_peak: float
    sharpness_before: float
    sharpness_after: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_finite_number(x: Any) -> bool:
    """``x`` is a measured value in a metrics row, summary or store cell: an ``int`` or
    ``float`` (not a ``bool``) that is finite. ``None`` (not measured), NaN, inf and other
    types are not.

    >>> [is_finite_number(x) for x in (1, 2.5, float("nan"), float("inf"), None, True, "1")]
    [True, True, False, False, False, False, False]
    """
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def detect_catapults(
    metrics: Sequence[Mapping[str, Any]],
    *,
    rise: float = 1.5,
    drop: float = 0.2,
    lookback: int | None = None,
) -> list[Catapult]:
    """All loss catapults in a run's metrics (rows with ``step``, ``train_loss``, ``sharpness``).

    See the module docstring for the definition. ``lookback`` (steps) defaults to twice the
    spacing of the sharpness measurements. Rows without sharpness are fine; a run without
    any sharpness measurement has no detectable catapult. ``rise`` must be a finite number >= 1,
    ``drop`` in ``[0, 1)`` and ``lookback`` None or an integer >= 0 (a ValueError naming it: ``rise=nan``
    and ``drop=nan`` found no catapult at all, ``drop=-1`` counted spikes whose sharpness rose).
    """
    rise = check_real("detect_catapults", "rise", rise, low=1.0)
    drop = check_real("detect_catapults", "drop", drop, low=0.0, high=1.0, high_open=True)
    lookback = check_integer("detect_catapults", "lookback", lookback, low=0, optional=True)  # steps
    steps = [r["step"] for r in metrics]
    losses = [r.get("train_loss") for r in metrics]
    sharp = [(r["step"], r["sharpness"]) for r in metrics if is_finite_number(r.get("sharpness"))]
    if len(sharp) < 2:
        return []
    if lookback is None:
        spacing = min(b[0] - a[0] for a, b in zip(sharp, sharp[1:])) or 1
        lookback = 2 * spacing

    # Find spikes: (start index, end index or None, running min before the spike).
    spikes = []
    running_min = math.inf
    i, n = 0, len(metrics)
    while i < n:
        loss = losses[i]
        if not is_finite_number(loss):
            break  # diverged: no further spikes can end
        if running_min < math.inf and loss > rise * running_min:
            start, level = i, running_min
            j = i + 1
            while j < n and not (is_finite_number(losses[j]) and losses[j] <= rise * level):
                if not is_finite_number(losses[j]):
                    j = None
                    break
                j += 1
            if j is None:
                break  # the spike ran into divergence
            spikes.append((start, j if j < n else None, level))
            if j >= n:
                break
            i = j
            continue
        running_min = min(running_min, loss)
        i += 1

    events = []
    for k, (start, end, level) in enumerate(spikes):
        stop = end if end is not None else n
        peak = max(range(start, stop), key=lambda idx: losses[idx])
        s_start, s_peak = steps[start], steps[peak]
        before = [v for st, v in sharp if s_start - lookback <= st <= s_start]
        if not before:
            prior = [v for st, v in sharp if st <= s_start]
            if not prior:
                continue
            before = prior[-1:]
        next_start = steps[spikes[k + 1][0]] if k + 1 < len(spikes) else math.inf
        after = [v for st, v in sharp if s_peak < st < next_start]
        if not after:
            continue
        s_before, s_after = max(before), min(after)
        if s_after < (1.0 - drop) * s_before:
            events.append(Catapult(
                start=s_start, peak=s_peak, end=steps[end] if end is not None else None,
                loss_before=level, loss_peak=losses[peak],
                sharpness_before=s_before, sharpness_after=s_after,
            ))
    return events
