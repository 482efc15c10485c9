"""Mutation pass 21 (curvature.batch_tree): the containers a batch is walked into, each rebuilt as its own
type, against the values written out by hand."""
from __future__ import annotations

import dataclasses
from collections import namedtuple

import torch

from catapult.curvature.batch_tree import map_tensors, tensor_leaves
from test_microbatch_containers_edges import Held

Pair = namedtuple("Pair", "ids mask")


@dataclasses.dataclass
class Tokens:
    ids: torch.Tensor
    count: int = dataclasses.field(init=False)

    def __post_init__(self):
        self.count = int(self.ids.numel())


def test_a_namedtuple_is_rebuilt_as_itself_field_by_field():
    # BT3: a namedtuple was called with one list of values (a TypeError)
    out = map_tensors(lambda t: t * 2, Pair(torch.ones(2), torch.zeros(1)))
    assert type(out) is Pair and out.ids.tolist() == [2.0, 2.0] and out.mask.tolist() == [0.0]


def test_a_dataclass_field_without_init_is_not_walked_and_its_class_is_a_leaf():
    # BT1: an init=False field was passed to dataclasses.replace (a ValueError); BT2: a dataclass's class
    # given as a value was walked as an instance (an AttributeError for its field without a default)
    out = map_tensors(lambda t: t + 1, {"tokens": Tokens(torch.zeros(3)), "kind": Tokens})
    assert type(out["tokens"]) is Tokens and out["tokens"].ids.tolist() == [1.0, 1.0, 1.0]
    assert out["tokens"].count == 3 and out["kind"] is Tokens
    assert [t.tolist() for t in tensor_leaves({"kind": Tokens, "t": Tokens(torch.ones(1))})] == [[1.0]]


def test_a_shared_item_mapping_holding_a_graph_tensor_is_copied_without_copying_its_tensors():
    # BT7: the container's copy deep-copied its tensors too; a tensor computed from one that requires grad
    # (a non-leaf) cannot be deep-copied: the cast raised torch's RuntimeError
    w = torch.ones(2, requires_grad=True)
    x = w * 3
    batch = Held(x=x, flag="keep")
    cast = map_tensors(lambda t: t.double(), batch)
    assert type(cast) is Held and cast["x"].dtype == torch.float64 and cast["x"].tolist() == [3.0, 3.0]
    assert cast["flag"] == "keep" and batch["x"] is x
