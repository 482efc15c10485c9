"""microbatch's containers at the edges (mutation pass 16): a dataclass class (not an instance)
is a leaf, a dataclass's init=False field is rebuilt by its class (not cut or passed), a mapping
copied around its tensors keeps the uncut ones, rows picked by a slice are contiguous copies, and
0-d tensors go whole through sample_index. Truth: the containers as constructed."""
from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping

import torch

from catapult.curvature.microbatch import sample_count, sample_index, sample_rows


@dataclasses.dataclass
class Options:
    scale: float = 1.0


@dataclasses.dataclass
class Encoded:
    ids: torch.Tensor
    length: int = dataclasses.field(init=False)

    def __post_init__(self):
        self.length = int(self.ids.shape[0])


class Held(MutableMapping):
    """A mapping keeping its items in an attribute (copy.copy shares them)."""

    def __init__(self, **items):
        self._items = dict(items)

    def __getitem__(self, key):
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value

    def __delitem__(self, key):
        del self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


def test_a_dataclass_class_in_a_batch_is_a_leaf():
    batch = {"x": torch.arange(4.0), "options": Options}
    piece = sample_rows(batch, 1, 3)
    assert piece["options"] is Options and piece["x"].tolist() == [1.0, 2.0]


def test_a_dataclass_init_false_field_is_rebuilt_by_its_class():
    batch = Encoded(torch.arange(6))
    assert sample_count(batch) == 6 and batch.length == 6
    piece = sample_rows(batch, 0, 4)
    assert piece.ids.tolist() == [0, 1, 2, 3] and piece.length == 4


def test_a_mapping_copied_around_its_tensors_keeps_the_uncut_ones():
    scale = torch.tensor(2.0)
    batch = Held(x=torch.arange(6.0), scale=scale)
    piece = sample_rows(batch, 2, 4)
    assert piece["scale"] is scale and piece["x"].tolist() == [2.0, 3.0] and batch["x"].shape == (6,)


def test_rows_picked_by_a_slice_are_contiguous_and_0_d_tensors_go_whole():
    x = torch.arange(12.0).view(6, 2)
    scale = torch.tensor(3.0)
    picked = sample_index({"x": x, "scale": scale}, slice(0, 6, 2))
    assert picked["x"].tolist() == [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]] and picked["x"].is_contiguous()
    assert picked["scale"] is scale
    assert sample_index({"x": x, "scale": scale}, [5, 0])["scale"] is scale


def test_a_namedtuple_batch_is_rebuilt_field_by_field():
    from collections import namedtuple

    Pair = namedtuple("Pair", ["ids", "mask"])
    piece = sample_rows(Pair(torch.arange(5), torch.ones(5)), 1, 3)
    assert type(piece) is Pair and piece.ids.tolist() == [1, 2] and piece.mask.tolist() == [1.0, 1.0]
