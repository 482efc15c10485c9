"""Mutation pass 12 (engine.step_accuracy): what StepAccuracies waits for and keeps. Truth:
:func:`catapult.losses.accuracy` of each batch on its own, its errors, and what a step's outputs
hold alive."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from catapult.engine.step_accuracy import MAX_ENTRIES, StepAccuracies, classifier_batch
from catapult.losses import accuracy


def test_labels_of_shape_n_by_1_are_counted_as_accuracy_counts_them():
    # labels (N, 1) against outputs (N, C): compared row by row (accuracy flattens them), not
    # broadcast against every row (an (N, N) table of hits)
    outputs = torch.tensor([[1.0, 3.0], [2.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    labels = torch.tensor([[1], [1], [1], [1]])
    acc, row = StepAccuracies(), {}
    acc.add(row, torch.tensor(0.0), outputs, labels)
    acc.resolve()
    assert row["train_accuracy"] == accuracy(outputs, labels) == 0.5


def test_float_labels_of_one_dimension_are_refused_at_once_as_accuracy_refuses_them():
    # float 1-d targets are neither labels nor probabilities of the outputs' shape: accuracy says
    # so; they did not wait to be compared with the arg-max as numbers (1.0 == 1)
    outputs = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    labels = torch.tensor([1.0, 1.0])
    with pytest.raises(ValueError, match=r"float targets of shape \(2,\)"):
        accuracy(outputs, labels)
    with pytest.raises(ValueError, match=r"float targets of shape \(2,\)"):
        StepAccuracies().add({}, torch.tensor(0.0), outputs, labels)
    # nor after a classifier's batch of the same shapes waits (the kind of batch is part of its key)
    acc, row = StepAccuracies(), {}
    acc.add(row, torch.tensor(0.0), outputs, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"float targets of shape \(2,\)"):
        acc.add({}, torch.tensor(0.0), outputs, labels)
    assert row["train_accuracy"] == 1.0   # the waiting batch was counted first


def test_a_batch_waits_only_up_to_max_entries_outputs():
    # MAX_ENTRIES is the memory cap of a kept batch (CHUNK of them: 4 MiB of float32)
    labels = torch.zeros(1, dtype=torch.long)
    assert classifier_batch(torch.zeros(1, MAX_ENTRIES), labels)
    assert not classifier_batch(torch.zeros(1, MAX_ENTRIES + 1), labels)


def test_rows_wait_at_most_chunk_steps():
    # "at the latest when CHUNK rows wait": the CHUNK-th row's add counts every waiting row
    g = torch.Generator().manual_seed(0)
    acc, rows, batches = StepAccuracies(), [], []
    for t in range(StepAccuracies.CHUNK):
        outputs, labels = torch.randn(4, 3, generator=g), torch.randint(0, 3, (4,), generator=g)
        rows.append({})
        batches.append((outputs, labels))
        acc.add(rows[-1], torch.tensor(0.0), outputs, labels)
        if t < StepAccuracies.CHUNK - 1:
            assert "train_accuracy" not in rows[0]
    assert [r.get("train_accuracy") for r in rows] == [accuracy(o, y) for o, y in batches]


def test_a_waiting_batch_keeps_no_autograd_graph_alive():
    # the kept outputs are detached: the step's graph (and the activations it saved for the
    # backward) is freed when the step ends, not CHUNK steps later
    weight = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 5)
    saved = weakref.ref(x)                  # saved by the graph for weight's gradient
    outputs = x @ weight
    acc, row = StepAccuracies(), {}
    acc.add(row, torch.tensor(0.0), outputs, torch.tensor([0, 1, 2, 0]))
    del x, outputs
    gc.collect()
    assert saved() is None
    acc.resolve()
    assert "train_accuracy" in row


def test_fewer_labels_than_rows_are_refused_at_once_as_accuracy_refuses_them():
    # one label for four rows was compared with every row's arg-max (broadcast), silently
    outputs = torch.tensor([[1.0, 3.0], [2.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    labels = torch.tensor([1])
    with pytest.raises(ValueError) as expected:
        accuracy(outputs, labels)
    with pytest.raises(ValueError) as err:
        StepAccuracies().add({}, torch.tensor(0.0), outputs, labels)
    assert str(err.value) == str(expected.value)
