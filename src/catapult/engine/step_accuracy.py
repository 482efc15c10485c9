"""Each row's ``train_accuracy`` in the engine's loop (:mod:`catapult.engine.loop`), counted a
chunk of steps at a time.

Why: inside a small minibatch step every torch call runs cold, at ~10x its hot time, and the
accuracy's four ops (arg-max, compare, sum, read) cost ~45 µs of CPU in a 2.3 ms step of the
benchmark's MLP (RESULTS, "Engine overhead"). A classifier's batch (:func:`classifier_batch`)
is kept (its outputs detached, its labels) and the hits of :attr:`StepAccuracies.CHUNK` steps
are counted at once, hot, on the stacked batches (:func:`stacked_hits`: torch's arg-max of each
row, as :func:`catapult.losses.accuracy` takes it, so the same counts and the same accuracies,
bit for bit). Any other batch (token logits, soft targets) is counted at once, as
:func:`catapult.losses.loss_and_accuracy` counts it.
"""
from __future__ import annotations

from typing import Any

import torch

from catapult.losses import IGNORE_INDEX, loss_and_accuracy

__all__ = ["StepAccuracies", "classifier_batch", "stacked_hits", "stacked_counted", "MAX_ENTRIES"]

#: Outputs of one batch that :class:`StepAccuracies` keeps for a later count, at most (with
#: :attr:`StepAccuracies.CHUNK` batches: 4 MiB of float32 held). A memory cap, not
#: :data:`catapult.losses.PLAIN_ARGMAX_ENTRIES` (a speed crossover of the same size): above either,
#: the counts are the same (:func:`catapult.losses.argmax_hits` gives plain arg-max's counts).
MAX_ENTRIES = 1 << 14


def classifier_batch(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``(outputs, targets)`` is a classifier's batch whose hits :class:`StepAccuracies`
    counts later: N x C outputs (at most :data:`MAX_ENTRIES`) and N ``int64`` labels, on one device.

    >>> labels = torch.tensor([0, 2])
    >>> classifier_batch(torch.zeros(2, 3), labels), classifier_batch(torch.zeros(2, 4, 3), labels)
    (True, False)
    """
    n = targets.shape[0] if targets.dim() == 1 else 0
    return bool(n and targets.dtype == torch.int64 and outputs.dim() == 2 and outputs.shape[0] == n
                and outputs.numel() <= MAX_ENTRIES and outputs.device == targets.device)


def stacked_hits(outputs: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Per batch ``s`` of classifier batches stacked as ``[S, N, C]`` outputs and ``[S, N]``
    labels: ``sum_i [argmax_k outputs[s, i, k] == targets[s, i]]`` (torch's arg-max: the first
    maximum, a NaN counting as the maximum), which :func:`catapult.losses.accuracy` divides by the
    batch's counted labels (:func:`stacked_counted`).

    >>> logits = torch.tensor([[[1., 3.], [2., 0.]], [[0., 0.], [5., float("nan")]]])
    >>> stacked_hits(logits, torch.tensor([[1, 1], [0, 1]]))
    [1, 2]
    """
    return (outputs.argmax(dim=-1) == targets).sum(dim=-1).tolist()


def stacked_counted(targets: torch.Tensor) -> list[int]:
    """Per batch ``s`` of ``[S, N]`` stacked labels: the labels :func:`catapult.losses.accuracy`
    counts (those other than :data:`~catapult.losses.IGNORE_INDEX`, -100).

    >>> stacked_counted(torch.tensor([[1, -100], [0, 1]]))
    [1, 2]
    """
    return (targets != IGNORE_INDEX).sum(dim=-1).tolist()


class StepAccuracies:
    """Fills ``row["train_accuracy"]`` of the rows it is given: at once, or for a classifier's
    batch at the latest when :attr:`CHUNK` rows wait or :meth:`resolve` is called. Whoever reads
    a row's accuracy (the metrics file at a flush, the progress lines, the summary) calls
    :meth:`resolve` first. The outputs must not change after :meth:`add` (a model's outputs are
    new tensors at each forward).

    >>> acc = StepAccuracies()
    >>> row = {}
    >>> acc.add(row, torch.tensor(0.5), torch.tensor([[1., 3.], [2., 0.]]), torch.tensor([1, 1]))
    0.5
    >>> row
    {}
    >>> acc.resolve()
    >>> row
    {'train_accuracy': 0.5}
    """

    #: Steps whose classifier batches wait before their hits are counted at once (at most
    #: CHUNK x :data:`MAX_ENTRIES` outputs held: 4 MiB of float32).
    CHUNK = 64

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._key: tuple | None = None  # the waiting batches' shapes, dtypes and devices
        self._waits = False  # whether batches of that key wait (classifier batches)

    def add(self, row: dict[str, Any], loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """``float(loss)``; ``row["train_accuracy"]`` = :func:`~catapult.losses.accuracy` of
        ``(outputs, targets)``, now or at the next :meth:`resolve`."""
        key = (outputs.shape, outputs.dtype, outputs.get_device(), targets.shape, targets.dtype, targets.get_device())
        if key != self._key:  # the first batch, or one unlike those waiting: they are counted first
            self.resolve()
            self._key, self._waits = key, classifier_batch(outputs, targets)
        if not self._waits:
            loss_t, row["train_accuracy"] = loss_and_accuracy(loss, outputs, targets)
            return loss_t
        self._rows.append(row)
        self._outputs.append(outputs.detach())
        self._targets.append(targets)
        loss_t = float(loss.item())
        if len(self._rows) >= self.CHUNK:
            self.resolve()
        return loss_t

    def resolve(self) -> None:
        """Count the waiting batches' hits (one stacked call) and fill their rows."""
        rows, outputs, targets = self._rows, self._outputs, self._targets
        if not rows:
            return
        self._rows, self._outputs, self._targets = [], [], []
        labels = torch.stack(targets)
        hits = stacked_hits(torch.stack(outputs), labels)
        for row, count, counted in zip(rows, hits, stacked_counted(labels)):
            row["train_accuracy"] = count / counted if counted else float("nan")
