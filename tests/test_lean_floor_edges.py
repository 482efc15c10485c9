"""memory='lean''s sizes at the edges stop 58 added (mutation pass 15): the 1 MiB micro-batch floor
(``LEAN_MIN_CHUNK_BYTES``: a batch whose activations are at most 1 MiB is one chunk, one byte more
is two), the chunk count capped at the sample count, the basis sized by the relative rule alone
(the floor leaves ``B`` as it was), activations of nested inputs counted as those of a tensor
input, and the sample count of nested inputs left unsized under ``distributed``. Truth: the
docstring's formulas evaluated here by hand, and the same computation on a tensor batch."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from catapult.curvature.lean import activation_bytes, lean_sizes
from catapult.curvature.sharpness import lean_samples

MIB = 2 ** 20


def test_the_floor_is_one_mebibyte_of_activations():
    # a 50-parameter model (P = 200 bytes): the relative rule alone would cut 64 samples into 64 chunks
    assert lean_sizes(200, MIB, 1000, 64)[0] == 1
    assert lean_sizes(200, MIB + 1, 1000, 64)[0] == 2
    assert lean_sizes(200, 3 * MIB, 1000, 64)[0] == 4


def test_the_chunk_count_is_at_most_the_sample_count():
    # 100 MiB over 10 samples: the floor asks for 128 chunks (the smallest power of two), 10 samples have 10
    assert lean_sizes(8, 100 * MIB, MIB, 10)[0] == 10


def test_the_floor_leaves_the_basis_of_the_relative_rule():
    """P = 1 MB, A = 3.7 P, L = 1.2 P, 100 samples: the floor gives m = 4 (A / 4 <= 1 MiB), the
    relative rule m_r = 8 (A / 8 <= P / 2), and B = floor((3 (P + A + L) - 8 P - ceil(2.6 A / m_r)) / P)."""
    P, A, L = 1_000_000, 3_700_000, 1_200_000
    m_r = 8
    basis = (3 * (P + A + L) - 8 * P - math.ceil(2.6 * A / m_r)) // P
    assert basis == 8
    assert lean_sizes(P, A, L, 100) == (4, basis, True)


class _DictLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, batch):
        return torch.tanh(self.lin(batch["x"]))


def test_nested_inputs_are_not_counted_as_activations():
    """The batch is held already: a dict input's tensors are no more activations than a tensor input's."""
    torch.manual_seed(0)
    model = _DictLinear()
    x, y = torch.randn(40, 6), torch.randn(40, 4)
    plain = activation_bytes(nn.Sequential(model.lin, nn.Tanh()), nn.MSELoss(), (x, y))
    nested = activation_bytes(model, nn.MSELoss(), ({"x": x, "flag": True}, y))
    assert nested == plain


def test_lean_sizes_tensor_and_nested_inputs_alike():
    # a rank's nested shard is sized as one process's nested batch (h5, stop 59: the distributed
    # flag that sized tensor shards only is gone); inputs with no sample dimension give None
    assert lean_samples(torch.zeros(5, 2)) == 5
    assert lean_samples({"ids": torch.zeros(5, 3), "flag": True}) == 5
    assert lean_samples((torch.zeros(4, 3), [torch.zeros(4)])) == 4
    assert lean_samples(torch.tensor(3.0)) is None


def test_a_batch_smaller_than_the_probe_is_measured_whole():
    """nn.Linear(2, 1) without bias under MSE saves its output: 4 bytes a float32 sample."""
    model = nn.Linear(2, 1, bias=False)
    assert activation_bytes(model, nn.MSELoss(), (torch.zeros(3, 2), torch.zeros(3, 1))) == (12, 12)


def test_activation_bytes_passes_targets_of_another_length_whole():
    # targets with no sample count of the inputs' (class weights, 5 for 8 samples) go whole to
    # the probe's forward, as to every micro-batch: cut to the probe's 2 rows they failed to
    # broadcast. Truth: Tanh's output, 16 float32 a sample saved once (it is the second Linear's
    # input), over 8 samples; the weights are the batch's own (not counted)
    from catapult.curvature.lean import activation_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    x, class_weights = torch.randn(8, 3), torch.rand(5)
    assert activation_bytes(model, lambda out, w: (out * w).sum(), (x, class_weights), probe=2) == (16 * 4 * 8, 16 * 4 * 8)
