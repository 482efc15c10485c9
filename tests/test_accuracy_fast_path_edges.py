"""The accuracy fast path (``losses.accuracy`` on a classifier's batch: 1-d int64 labels, 2-d
outputs of as many rows) must take only the batches it is exact for; any other shape or dtype goes
the general way (its shape checks, its flattening), and the out-of-range label messages name the
first bad label (mutation pass 11). Truth: a per-row arg-max loop, and the documented refusals."""
from __future__ import annotations

import pytest
import torch

from catapult.losses import accuracy, cross_entropy, mse


def _truth(outputs, labels):
    rows, labels = outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1)
    return sum(int(torch.argmax(r)) == int(y) for r, y in zip(rows, labels)) / len(labels)


OUTPUTS = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7], [0.3, 0.6, 0.1]])
LABELS = torch.tensor([1, 2, 2, 0])  # hits: rows 0 and 2


def test_labels_of_shape_n_1_are_one_per_row_not_broadcast_against_every_row():
    assert _truth(OUTPUTS, LABELS) == 0.5
    assert accuracy(OUTPUTS, LABELS.reshape(4, 1)) == 0.5  # (N,) == (N, 1) broadcast to N x N pairs: 0.75


def test_outputs_with_a_length_1_middle_dimension_are_one_row_each():
    assert accuracy(OUTPUTS.reshape(4, 1, 3), LABELS) == 0.5  # (N, 1) == (N,) broadcast: 0.75


@pytest.mark.parametrize("labels", [torch.tensor([1]), torch.tensor([1, 2, 2])])
def test_fewer_labels_than_rows_are_refused_not_broadcast(labels):
    with pytest.raises(ValueError, match=r"accuracy: integer targets of shape"):
        accuracy(OUTPUTS, labels)
    with pytest.raises(ValueError, match=r"accuracy: integer targets of shape"):
        accuracy(OUTPUTS[:1], torch.tensor([1, 0, 1, 0]))  # one row, four labels: broadcast before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_labels_of_one_dimension_are_not_counted_as_classes(dtype):
    with pytest.raises(ValueError, match=r"accuracy: float targets of shape \(4,\)"):
        accuracy(OUTPUTS, LABELS.to(dtype))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_other_integer_dtypes_count_as_int64_labels(dtype):
    assert accuracy(OUTPUTS, LABELS.to(dtype)) == 0.5


@pytest.mark.parametrize("shape", [(3, 4), (5, 3), (2, 6)])
def test_soft_targets_of_another_shape_are_refused_by_name(shape):
    soft = torch.full(shape, 0.5)
    with pytest.raises(ValueError, match=r"accuracy: float targets of shape"):
        accuracy(OUTPUTS, soft)


def test_the_out_of_range_message_names_the_first_bad_label():
    logits = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"cross_entropy: label 7 is out of range for 3 classes"):
        cross_entropy(logits, torch.tensor([0, 7, 9, 1]))
    with pytest.raises(ValueError, match=r"mse: label 7 is out of range for 3 classes"):
        mse(logits, torch.tensor([0, 7, 9, 1]))
    # torch's ignore index is no bad label: the one after it is named
    with pytest.raises(ValueError, match=r"cross_entropy: label 5 is out of range for 3 classes"):
        cross_entropy(logits, torch.tensor([-100, 1, 5, 0]))
    assert cross_entropy(logits, torch.tensor([-100, 1, 2, 0])).item() == pytest.approx(1.0986122886681098)
