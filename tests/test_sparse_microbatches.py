"""Sparse inputs and targets (COO, CSR, CSC; BSR by whole blocks) with ``chunk_size`` or
``memory="lean"``: cut into micro-batches by rows in their own layout
(:func:`catapult.curvature.samples.sparse_rows`), as the coarse start's sub-batches are; lean's
sizing probe counts a sparse tensor by its index and value tensors. Before stop 62 both were refused
(``microbatch.refuse_sparse``). Truth: the same batch dense, and the dense float64 Hessian's top
eigenvalue (``numpy.linalg.eigvalsh``). A block-sparse batch that micro-batches would cut inside a
block is refused before any forward, naming the option."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import catapult
from catapult.curvature import lean
from catapult.curvature.microbatch import MicroBatchRefused
from catapult.curvature.sharpness import memory_setting
from dense_curvature import dense_hessian

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")]


class _Densify(torch.nn.Module):
    """A 4-8-1 tanh MLP that reads its input dense (so any sparse layout runs its forward)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x.to_dense() if x.layout != torch.strided else x)


def _problem():
    model = _Densify().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    x[x < 0.3] = 0
    return model, x, torch.randn(30, 1, generator=gen, dtype=torch.float64)


LAYOUTS = {"coo": lambda t: t.to_sparse(), "csr": lambda t: t.to_sparse_csr(), "csc": lambda t: t.to_sparse_csc(),
           "bsr": lambda t: t.to_sparse_bsr((2, 2))}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sparse_inputs_are_cut_into_micro_batches(layout):
    model, x, y = _problem()
    loss_fn = torch.nn.MSELoss()
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    sparse = LAYOUTS[layout](x)
    for options in ({"chunk_size": 8}, {"chunk_size": 8, "curvature": "ggn"}, {"chunk_size": 30}):
        dense = catapult.sharpness(model, loss_fn, (x, y), tol=1e-10, **options)
        got = catapult.sharpness(model, loss_fn, (sparse, y), tol=1e-10, **options)
        assert got.value == pytest.approx(dense.value, rel=1e-12) and got.matvecs == dense.matvecs, options
        if "curvature" not in options:
            assert got.value == pytest.approx(top, rel=1e-9)
    op = catapult.curvature.HessianOperator(model, loss_fn, (sparse, y), chunk_size=8)
    assert op.chunks == 4


def test_sparse_targets_are_cut_too():
    model, x, y = _problem()
    loss = lambda out, t: torch.nn.functional.mse_loss(out, t["y"].to_dense())   # noqa: E731
    top = np.linalg.eigvalsh(dense_hessian(model, torch.nn.MSELoss(), (x, y)).numpy())[-1]
    for layout in ("coo", "csr"):
        got = catapult.sharpness(model, loss, (x, {"y": LAYOUTS[layout](y)}), tol=1e-10, chunk_size=7)
        assert got.value == pytest.approx(top, rel=1e-9)


def test_a_chunk_that_cuts_a_block_is_refused_before_any_forward():
    model, x, y = _problem()
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(MicroBatchRefused, match=r"chunk_size: the batch's inputs hold a torch.sparse_bsr tensor of "
                                                r"blocks of 2 rows, which micro-batches of 7 would cut") as caught:
        catapult.sharpness(model, torch.nn.MSELoss(), (x.to_sparse_bsr((2, 2)), y), chunk_size=7)
    assert caught.value.option == "chunk_size" and forwards == []
    hook.remove()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_lean_sizes_and_cuts_a_sparse_batch_as_its_dense_one(layout, monkeypatch):
    # lean.LEAN_MIN_CHUNK_BYTES (1 MiB) at 0: this small problem's activations are then several
    # micro-batches (A / m <= P / 2), which lean's sizing probe must measure on the sparse batch
    model, x, y = _problem()
    loss_fn = torch.nn.MSELoss()
    monkeypatch.setattr(lean, "LEAN_MIN_CHUNK_BYTES", 0)
    sparse = LAYOUTS[layout](x)
    # the sparse batch's rows are not counted (the set-up state holds the batch), the forward's dense
    # copy of them is, as the Linear saves it: 30 samples x 4 features x 8 bytes more than the dense
    # batch's count (before: "Cannot access storage of SparseTensorImpl")
    (total, largest), (dense_total, dense_largest) = (lean.activation_bytes(model, loss_fn, (inputs, y))
                                                      for inputs in (sparse, x))
    assert (total, largest) == (dense_total + 30 * 4 * 8, dense_largest)
    chunk, _ = memory_setting("lean", (sparse, y), None, None, model, loss_fn, basis_free=True)
    assert 1 < chunk < 30 and chunk % (2 if layout == "bsr" else 1) == 0   # whole blocks of 2 rows
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    got = catapult.sharpness(model, loss_fn, (sparse, y), tol=1e-8, memory="lean", max_iter=1000)
    assert got.converged and got.value == pytest.approx(top, rel=1e-7)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_forward_mode_products_refuse_a_sparse_batch_before_any_forward(layout):
    # torch.func.jvp carries no sparse tensor: COO failed inside torch ("Could not run
    # 'aten::_efficientzerotensor' ... 'SparseCPU'") after the first forward, CSR/CSC/BSR with a raw
    # RuntimeError ("Sparse CSR tensors do not have strides"); hvp='compiled' so on the compressed layouts
    model, x, y = _problem()
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    sparse, loss_fn = LAYOUTS[layout](x), torch.nn.MSELoss()
    cases = [({"hvp": "forward_over_reverse"}, (sparse, y)), ({"hvp": "forward_over_reverse", "memory": "lean"}, (sparse, y)),
             ({"hvp": "forward_over_reverse", "chunk_size": 8}, (sparse, y)),
             ({"hvp": "forward_over_reverse"}, (x, {"y": y.to_sparse_bsr((2, 1)) if layout == "bsr" else LAYOUTS[layout](y)}))]
    if layout != "coo":
        cases.append(({"hvp": "compiled"}, (sparse, y)))
    for options, batch in cases:
        what = "inputs" if batch[0] is sparse else "targets['y']"
        with pytest.raises(ValueError, match=rf"hvp='{options['hvp']}': the batch's {re.escape(what)} hold a "
                                             rf"torch.sparse_{layout} tensor"):
            catapult.sharpness(model, loss_fn, batch, **options)
        with pytest.raises(ValueError, match=rf"hvp='{options['hvp']}'"):
            catapult.curvature.HessianOperator(model, loss_fn, batch, hvp=options["hvp"])
        with pytest.raises(ValueError, match=rf"hvp='{options['hvp']}'"):   # lean's probe ran a forward first
            catapult.top_eigenpairs(model, loss_fn, batch, k=2, **{"memory": "lean", **options})
    assert forwards == []
    # the Gauss-Newton products (forward over reverse inside) take them, as double backprop does
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    assert catapult.sharpness(model, loss_fn, (sparse, y), tol=1e-10).value == pytest.approx(top, rel=1e-9)
    dense_ggn = catapult.sharpness(model, loss_fn, (x, y), tol=1e-10, curvature="ggn").value
    assert catapult.sharpness(model, loss_fn, (sparse, y), tol=1e-10, curvature="ggn").value == pytest.approx(dense_ggn, rel=1e-12)
    hook.remove()


class _SparseProduct(torch.nn.Module):
    """``x @ w`` by ``torch.sparse.mm`` for a sparse ``x``: the product saves the sparse rows it is given."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 1, dtype=torch.float64))

    def forward(self, x):
        return torch.sparse.mm(x, self.w) if x.layout != torch.strided else x @ self.w


def test_lean_counts_no_batch_rows_and_the_sparse_tensors_a_forward_saves():
    # (mutation pass 19) the probe's rows of a sparse batch are copies (sparse_rows), the batch all the
    # same: a forward saving them counts as the dense one (240 = the 30 x 1 float64 output; LS4 counted
    # the copies' indices and values); a sparse tensor the forward makes and saves is counted by its
    # index and value tensors (86 nonzeros: 2 x 86 int64 + 86 float64 = 2064 bytes, beside relu's saved
    # 30 x 8 output, 1920; LS5 counted strided tensors alone); the probe of a block-sparse batch takes
    # whole blocks (3 rows -> 4; LS6 cut a block: ValueError); a COO tensor's parts are its indices and
    # values (LS1 left out the indices)
    model, x, y = _problem()
    loss_fn = torch.nn.MSELoss()
    for layout in ("coo", "csr"):
        assert lean.activation_bytes(_SparseProduct(), loss_fn, (LAYOUTS[layout](x), y)) == \
            lean.activation_bytes(_SparseProduct(), loss_fn, (x, y)) == (240, 240)

    class SparseMiddle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.w = torch.nn.Linear(4, 8).double(), torch.nn.Parameter(torch.randn(8, 1, dtype=torch.float64))

        def forward(self, x):
            return torch.sparse.mm(self.a(x).relu().to_sparse(), self.w)

    middle = SparseMiddle()
    assert middle.a(x).relu().count_nonzero() == 86
    total, _ = lean.activation_bytes(middle, loss_fn, (x, y), probe=30)
    assert total >= 86 * (2 * 8 + 8) + 30 * 8 * 8
    bsr = LAYOUTS["bsr"](x)
    assert lean.activation_bytes(model, loss_fn, (bsr, y), probe=3) == lean.activation_bytes(model, loss_fn, (bsr, y), probe=4)
    coo = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse()
    assert [p.tolist() for p in lean.strided_parts(coo)] == [[[0, 1], [1, 0]], [2.0, 3.0]]


def test_chunk_rows_take_every_leafs_whole_blocks_and_no_more_than_the_batch():
    # (mutation pass 19) blocks of 2 rows beside blocks of 3: a chunk holds whole blocks of both, a
    # multiple of 6 (LS7 took the larger, 3: a cut inside the 2-row blocks); never more rows than the
    # batch's 12 (LS9: 18); a BSR target that chunks would cut is refused before any forward, naming
    # the targets (LS11 refused only inputs: sparse_rows' ValueError inside the operator)
    x = torch.arange(72.0).view(12, 6) % 5
    two, three = x.to_sparse_bsr((2, 2)), x.to_sparse_bsr((3, 3))
    assert lean.chunk_rows(3, (two, three)) == 6 and lean.chunk_rows(7, (two, {"t": three})) == 12
    assert lean.chunk_rows(13, (x, two)) == 12
    model, x, y = _problem()
    loss = lambda out, t: torch.nn.functional.mse_loss(out, t.to_dense())   # noqa: E731
    with pytest.raises(MicroBatchRefused, match=r"chunk_size: the batch's targets hold a torch.sparse_bsr tensor "
                                                r"of blocks of 2 rows, which micro-batches of 7 would cut"):
        catapult.sharpness(model, loss, (x, y.to_sparse_bsr((2, 1))), chunk_size=7)


def test_compiled_products_refuse_every_compressed_layout():
    # (mutation pass 19, FA3) CSR, CSC, BSR and BSC: hvp='compiled' refuses each, before any forward
    # (FA3 left BSC out: torch.func's "Sparse CSR tensors do not have strides" inside); COO runs
    from catapult.curvature.forward_ad import refuse_sparse_products

    x = torch.eye(4)
    for sparse in (x.to_sparse_csr(), x.to_sparse_csc(), x.to_sparse_bsr((2, 2)), x.to_sparse_bsc((2, 2))):
        with pytest.raises(ValueError, match=rf"hvp='compiled': the batch's inputs hold a {sparse.layout} tensor"):
            refuse_sparse_products("compiled", (sparse, x))
        with pytest.raises(ValueError, match=rf"hvp='compiled': the batch's targets hold a {sparse.layout} tensor"):
            refuse_sparse_products("compiled", [x, sparse])
    assert refuse_sparse_products("compiled", (x.to_sparse(), x)) is None
