"""Which rows a ``max_norm`` lookup reads, and in which norm, decide whether finite differences
are refused (``stateless.RenormedCopies.room``, ``difference.refuse_renormed_differences``): torch
renormalises a row whose ``norm_type`` norm exceeds ``max_norm`` (``torch.embedding_renorm_``),
so a batch that reads one such row among small ones, or a row above the cap in the 1-norm but
not in the 2-norm, is renormalised; a row above the cap only in a norm the lookup does not take
is not."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian

import catapult
from catapult.curvature.stateless import RenormedCopies

REFUSED = "hvp='finite_difference': an embedding lookup with max_norm"


class Lookup(nn.Module):
    """``F.embedding(tokens, table, max_norm, norm_type)`` (norm_type left out where None), mean, tanh, linear."""

    def __init__(self, table, max_norm, norm_type=None):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.out = nn.Linear(table.shape[1], 3).double()
        self.max_norm, self.norm_type = max_norm, norm_type

    def forward(self, tokens):
        kwargs = {} if self.norm_type is None else {"norm_type": self.norm_type}
        rows = F.embedding(tokens, self.table, max_norm=self.max_norm, **kwargs)
        return self.out(torch.tanh(rows.mean(1)))


def _batch():
    torch.manual_seed(1)
    return torch.randint(0, 6, (10, 3)), torch.randint(0, 3, (10,))


def _signs():
    torch.manual_seed(2)
    return torch.randint(0, 2, (6, 4)).double() * 2 - 1


def test_one_row_above_the_cap_among_small_ones_is_refused():
    # rows 0, 2, 4 of 2-norm 0.2, rows 1, 3, 5 of 2-norm 2 under max_norm 0.5: the batch reads both
    # kinds, and the large ones are renormalised in every forward
    table = _signs() * torch.tensor([0.1, 1.0] * 3, dtype=torch.float64)[:, None]
    tokens, labels = _batch()
    assert {int(t) % 2 for t in tokens.reshape(-1)} == {0, 1}
    model = Lookup(table, 0.5)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=REFUSED):
        catapult.sharpness(model, F.cross_entropy, (tokens, labels), hvp="finite_difference")
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_rows_above_the_cap_in_the_one_norm_the_lookup_takes_are_refused():
    # entries +-0.3: 2-norm 0.6, 1-norm 1.2; norm_type 1 with max_norm 1 renormalises every row
    table = _signs() * 0.3
    tokens = _batch()[0]
    renormed = table.clone()
    torch.embedding_renorm_(renormed, tokens.reshape(-1), 1.0, 1.0)
    assert not torch.equal(renormed, table)   # torch's own lookup renormalises these rows
    model = Lookup(table, 1.0, norm_type=1.0)
    with pytest.raises(ValueError, match=REFUSED):
        catapult.sharpness(model, F.cross_entropy, _batch(), hvp="finite_difference")


def test_rows_above_the_cap_only_in_a_norm_the_lookup_does_not_take_are_measured():
    # the same rows under the default 2-norm (norm_type not passed): 0.6 < 1, never renormalised, so
    # the lookup is a plain one and finite differences give the plain model's dense Hessian
    table = _signs() * 0.3
    tokens, labels = _batch()
    renormed = table.clone()
    torch.embedding_renorm_(renormed, tokens.reshape(-1), 1.0, 2.0)
    assert torch.equal(renormed, table)
    model = Lookup(table, 1.0)
    plain = copy.deepcopy(model)
    plain.max_norm = None
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, (tokens, labels)).numpy())[-1]
    est = catapult.sharpness(model, F.cross_entropy, (tokens, labels), hvp="finite_difference", tol=1e-8)
    assert abs(est.value - truth) <= 1e-6 * truth


def test_a_lookup_of_no_rows_leaves_the_room_unbounded():
    # no row read, none renormalised: nothing for a difference step to move across the cap
    with RenormedCopies() as copies:
        F.embedding(torch.zeros(0, dtype=torch.long), torch.full((3, 2), 5.0), max_norm=1.0)
    assert copies.seen and copies.room == float("inf")


def test_rows_a_difference_step_below_the_cap_in_the_max_norm_are_refused():
    # norm_type inf over 16 columns: rows of max-norm 0.3, the cap 1e-5 above it, under two float64
    # first steps (central_step 6.06e-6): a difference step of h along one entry moves the max-norm by
    # h, as far as it moves the 2-norm (no smaller bound for p > 2), so a product crosses the cap
    torch.manual_seed(3)
    table = (torch.randint(0, 2, (6, 16)).double() * 2 - 1) * 0.3
    tokens, labels = _batch()
    model = Lookup(table, 0.3 + 1e-5, norm_type=float("inf"))
    with pytest.raises(ValueError, match=REFUSED):
        catapult.sharpness(model, F.cross_entropy, (tokens, labels), hvp="finite_difference")


@pytest.mark.parametrize("large_in", ["first", "last"])
def test_a_large_row_read_by_one_micro_batch_only_is_refused(large_in):
    # micro-batches of 4: only one of them reads the rows above the cap (the others read small rows),
    # and every shifted gradient renormalises those rows again
    table = _signs() * torch.tensor([0.1, 1.0] * 3, dtype=torch.float64)[:, None]
    torch.manual_seed(4)
    small = torch.tensor([0, 2, 4])[torch.randint(0, 3, (8, 3))]
    large = torch.tensor([1, 3, 5])[torch.randint(0, 3, (4, 3))]
    tokens = torch.cat([large, small] if large_in == "first" else [small, large])
    labels = torch.randint(0, 3, (12,))
    with pytest.raises(ValueError, match=REFUSED):
        catapult.sharpness(Lookup(table, 0.5), F.cross_entropy, (tokens, labels), hvp="finite_difference",
                           chunk_size=4)


def test_the_room_of_a_1_norm_lookup_is_in_units_of_a_2_norm_step():
    # Mutation pass 22 (ST5): ||x||_1 <= sqrt(d) ||x||_2, so a row of 1-norm 4 under max_norm 10 in
    # d = 4 columns is (10 - 4) / sqrt(4) = 3 unit 2-norm steps below the cap; in the 2-norm, 10 - 2 = 8
    table = torch.ones(2, 4, dtype=torch.float64)
    with RenormedCopies() as copies:
        F.embedding(torch.tensor([1]), table, max_norm=10.0, norm_type=1.0)
    assert copies.room == 3.0
    with RenormedCopies() as copies:
        F.embedding(torch.tensor([1]), table, max_norm=10.0)
    assert copies.room == 8.0


@pytest.mark.parametrize("which", ["functional_call", "functional_loss"])
def test_a_functional_call_left_to_look_copies_a_renormalised_weight(which):
    # Mutation pass 22 (ST17, ST18): renormed=None (the default) means look, not "none there"
    from catapult.curvature import stateless

    model = nn.Embedding(3, 2, max_norm=1.0)
    weight = torch.full((3, 2), 3.0)
    ids = torch.tensor([0, 2])
    if which == "functional_call":
        out = stateless.functional_call(model, {"weight": weight}, (ids,))
    else:
        out = stateless.functional_loss(model, {"weight": weight}, ids, lambda o, y: o, None)
    assert torch.equal(weight, torch.full((3, 2), 3.0))   # the tensor given is not written
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), rtol=1e-6, atol=0)   # the lookup is renormalised


def test_a_max_norm_weight_not_given_is_copied_so_the_models_own_is_not_renormed():
    # Mutation pass 22c (ST16): tensors that leave the embedding's weight out (its bias given)
    # run the model's own weight; the lookup's renorm must write a copy, not the parameter
    from catapult.curvature import stateless

    model = nn.Sequential(nn.Embedding(3, 2, max_norm=1.0), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    copies = stateless.renormed_copies(model, {"1.bias": torch.zeros(1)})
    assert copies["0.weight"] is not model[0].weight and torch.equal(copies["0.weight"], torch.full((3, 2), 3.0))
    out = stateless.functional_call(model, {"1.bias": torch.zeros(1)}, (torch.tensor([0, 2]),))
    assert out.shape == (2, 1)
    assert torch.equal(model[0].weight, torch.full((3, 2), 3.0))   # rows 0 and 2 had norm 3*sqrt(2) > 1
