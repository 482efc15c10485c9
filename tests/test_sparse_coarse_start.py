"""Sparse inputs (COO, CSR) of 256 samples or more with default settings: ``coarse="auto"`` cuts
them into its sub-batches (``samples.sparse_rows``). Before, ``sharpness`` failed inside torch
(COO ``NotImplementedError: Could not run 'aten::as_strided' ... 'SparseCPU'``, CSR "Sparse CSR
tensors do not have strides"), and ``distributed=True`` failed in its loss-reduction check (the
shard's halves). Truth: the same batch dense (rel 1e-5), and the rows cut from the dense tensor."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

import catapult
from catapult.curvature.coarse import FINITE_DIFFERENCE, coarse_levels
from catapult.curvature.samples import block_rows, sample_index, sample_rows, sparse_rows

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
LAYOUTS = {"coo": lambda x: x.to_sparse(), "csr": lambda x: x.to_sparse_csr()}


def _problem(n=300):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    x[x < 0.3] = 0
    return model, x, torch.randn(n, 1, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_defaults_on_a_sparse_batch_give_the_dense_answers(layout):
    model, x, y = _problem()
    sparse = LAYOUTS[layout](x)
    loss = torch.nn.MSELoss()
    dense_est = catapult.sharpness(model, loss, (x, y))
    est = catapult.sharpness(model, loss, (sparse, y))
    assert dense_est.coarse_matvecs > 0 and est.coarse_matvecs == dense_est.coarse_matvecs
    assert est.value == pytest.approx(dense_est.value, rel=1e-5)
    # a float32 ReLU model: "auto"'s difference level is skipped (kinks), and its sub-batch levels cut the batch
    relu = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    relu_dense, relu_sparse = (catapult.sharpness(relu, loss, (b.float(), y.float())) for b in (x, sparse))
    assert relu_sparse.coarse_matvecs == relu_dense.coarse_matvecs > 2   # sub-batch products beyond the check's 2
    assert relu_sparse.value == pytest.approx(relu_dense.value, rel=1e-5)
    # the truth of the dense answer itself: the dense Hessian's top eigenvalue
    params = dict(model.named_parameters())

    def flat_loss(theta):
        chunks, i = {}, 0
        for name, p in params.items():
            chunks[name] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        return loss(torch.func.functional_call(model, chunks, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
    top = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, theta))[-1].item()
    assert est.value == pytest.approx(top, rel=1e-5)
    pairs, dense_pairs = (catapult.top_eigenpairs(model, loss, (b, y), k=2) for b in (sparse, x))
    assert list(pairs.values) == pytest.approx(list(dense_pairs.values), rel=1e-5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert catapult.critical_lr(model, loss, (sparse, y), opt).lr == catapult.critical_lr(model, loss, (x, y), opt).lr


def _layouts(x):
    """Every sparse layout torch has, with dim 0 a row dimension (and a 3-d CSR, dim 0 a batch one)."""
    x3 = torch.stack([x, 2 * x, -x], dim=-1)   # (n, 4, 3)
    # a batched CSR holds the same number of elements per batch: one pattern, scaled per sample
    xb = (torch.arange(1.0, len(x) + 1)[:, None, None] * (torch.arange(12.0).view(4, 3) % 3 == 1))
    xb4 = (torch.arange(1.0, len(x) + 1)[:, None, None] * (torch.arange(16.0).view(4, 4) % 5 == 1))
    return {"coo": (x.to_sparse(), x), "coo hybrid": (x3.to_sparse(1), x3), "coo 3-d": (x3.to_sparse(), x3),
            "csr": (x.to_sparse_csr(), x), "csc": (x.to_sparse_csc(), x),
            "bsr": (x.to_sparse_bsr((2, 2)), x), "bsc": (x.to_sparse_bsc((2, 2)), x),
            "csr hybrid": (x3.to_sparse_csr(dense_dim=1), x3), "csr batched": (xb.to_sparse_csr(), xb),
            # (mutation pass 18, SC2) the other batched layouts: BSR is row-major (crow/col indices), CSC not
            "bsr batched": (xb4.to_sparse_bsr((2, 2)), xb4), "csc batched": (xb.to_sparse_csc(), xb)}


@pytest.mark.parametrize("name", ["coo", "coo hybrid", "coo 3-d", "csr", "csc", "bsr", "bsc", "csr hybrid",
                                  "csr batched", "bsr batched", "csc batched"])
def test_sparse_rows_are_the_dense_rows_in_the_same_layout(name):
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    blocked = name in ("bsr", "bsc")   # blocks of 2 rows: cut by whole blocks only
    for rows in ([7, 0, 7, 1], torch.arange(0, 10, 3 if blocked else 4), []):
        out = sparse_rows(sparse, rows)
        assert out.layout == sparse.layout
        if blocked:   # (mutation pass 18, SC6) its own blocks of 2 x 2, not 1 x 1
            assert out.values().shape[1:3] == sparse.values().shape[1:3] == (2, 2)
        assert torch.equal(out.to_dense(), dense[torch.as_tensor(rows, dtype=torch.long)])
    if blocked:
        with pytest.raises(ValueError, match=r"blocks of 2 rows: 3 of its rows"):
            sparse_rows(sparse, [7, 0, 7])
        return
    # the walkers the coarse start and the shard checks cut batches with
    assert torch.equal(sample_index({"x": sparse}, slice(0, 9, 3))["x"].to_dense(), dense[0:9:3])
    assert torch.equal(sample_index(sparse, [2, 2]).to_dense(), dense[[2, 2]])
    assert torch.equal(sample_rows((sparse, 1), 3, 8)[0].to_dense(), dense[3:8])


def test_cutting_a_batched_csr_raises_no_warning_of_torchs():
    """sparse_rows built a batched CSR's rows with check_invariants left implicit, and torch 2.13 warned
    'Sparse invariant checks are implicitly disabled' (once a process: a fresh one here) from catapult's
    line. Truth: the dense rows, and no warning but torch's beta-state note on CSR."""
    script = ("import warnings, torch\n"
              "from catapult.curvature.samples import sparse_rows\n"
              "xb = torch.arange(1.0, 5.0)[:, None, None] * (torch.arange(12.0).view(4, 3) % 3 == 1)\n"
              "sparse = xb.to_sparse_csr()\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    out = sparse_rows(sparse, [3, 0, 3])\n"
              "assert torch.equal(out.to_dense(), xb[[3, 0, 3]]), out.to_dense()\n"
              "print([str(w.message).split('.')[0] for w in caught if 'beta state' not in str(w.message)])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["coo", "coo hybrid", "coo 3-d", "csr", "csc", "bsr", "bsc", "csr hybrid",
                                  "csr batched", "bsr batched", "csc batched"])
def test_a_boolean_mask_picks_the_same_rows_of_dense_and_sparse_tensors(name):
    """A bool list was a mask on dense tensors (``t[[True, False, ...]]``) but rows 1 and 0 on sparse ones
    (``torch.as_tensor(mask, dtype=long)``). Truth: NumPy's boolean indexing of the dense array."""
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    keep = np.zeros(10, dtype=bool)
    keep[[2, 3, 6, 7]] = True            # (whole blocks of 2 rows, for BSR and BSC)
    truth = torch.from_numpy(dense.numpy()[keep])
    for mask in (keep.tolist(), torch.from_numpy(keep), keep):
        assert torch.equal(sample_index(dense, mask), truth)
        assert torch.equal(sample_index({"x": sparse}, mask)["x"].to_dense(), truth)
        assert torch.equal(sparse_rows(sparse, mask).to_dense(), truth)
    for tree in (dense, sparse):         # a mask of another length: refused alike (torch: an IndexError, or rows)
        with pytest.raises(ValueError, match=r"sample_index: a boolean mask of shape \(9,\) for 10 samples"):
            sample_index(tree, keep[:9].tolist())


@pytest.mark.parametrize("name", ["coo", "csr", "bsr", "csc batched"])
def test_an_index_of_uint8_or_float_entries_is_refused_alike_on_dense_and_sparse_tensors(name):
    """A uint8 index (tensor or array) was a mask on dense tensors (torch's deprecated reading:
    [1, 0, 1, 0] picked rows 0 and 2) but rows 1, 0, 1, 0 on sparse ones (NumPy reads it as rows
    too), so a sparse batch's samples silently differed from the dense batch's; a float tensor
    was refused on dense tensors (torch's IndexError) and truncated to rows on sparse ones. Both
    are now one ValueError naming the dtype, on either layout; bool masks and integer rows stay."""
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    flags = np.zeros(10, dtype=np.uint8)
    flags[[2, 3, 6, 7]] = 1
    rows = [2, 3, 6, 7]
    truth = torch.from_numpy(dense.numpy()[rows])            # NumPy's integer indexing
    for index in (torch.from_numpy(flags), flags):
        for tree in (dense, sparse):
            with pytest.raises(ValueError, match=r"sample_index: an index of dtype .*uint8.*bool mask.*integer rows"):
                sample_index(tree, index)
        with pytest.raises(ValueError, match=r"sparse_rows: an index of dtype .*uint8"):
            sparse_rows(sparse, index)
    for index in (torch.tensor([2.0, 3.0, 6.0, 7.0]), np.array([2.7, 3.1, 6.0, 7.0])):
        for tree in (dense, sparse):
            with pytest.raises(ValueError, match=r"sample_index: an index of dtype .*float"):
                sample_index(tree, index)
    for index in (torch.tensor(rows), torch.tensor(rows, dtype=torch.int32), np.array(rows), rows,
                  torch.from_numpy(flags.astype(bool)), flags.astype(bool)):
        assert torch.equal(sample_index(dense, index), truth)
        assert torch.equal(sample_index(sparse, index).to_dense(), truth)
        assert torch.equal(sparse_rows(sparse, index).to_dense(), truth)


@pytest.mark.parametrize("name", ["coo", "csr", "bsr", "csc batched"])
def test_a_tuple_of_bools_is_a_mask_and_a_mask_of_two_dims_is_refused(name):
    """Mutation pass 20 (SM3, SM4): a tuple of bools is a mask as a list is (SM3 read it as rows 1 and 0 on
    sparse tensors); a 2-d bool mask with one row a sample is refused naming its shape, on dense and sparse
    tensors alike (SM4 checked only its length). Truth: NumPy's boolean indexing of the dense array."""
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    keep = np.zeros(10, dtype=bool)
    keep[[2, 3, 6, 7]] = True
    truth = torch.from_numpy(dense.numpy()[keep])
    mask = tuple(keep.tolist())
    assert torch.equal(sample_index(dense, mask), truth)
    assert torch.equal(sample_index({"x": sparse}, mask)["x"].to_dense(), truth)
    assert torch.equal(sparse_rows(sparse, mask).to_dense(), truth)
    square = torch.from_numpy(np.stack([keep, keep], axis=1))
    for tree in (dense, sparse):
        with pytest.raises(ValueError, match=r"sample_index: a boolean mask of shape \(10, 2\) for 10 samples"):
            sample_index(tree, square)
    with pytest.raises(ValueError, match=r"sparse_rows: a boolean mask of shape \(10, 2\) for 10 samples"):
        sparse_rows(sparse, square)


def test_a_blocks_rows_with_blocks_that_are_not_square_and_cuts_that_run_past_the_rows():
    """(mutation pass 19) A block's rows are the values' dim 1, its columns dim 2 (SC9 took the
    columns: alike for the 2 x 2 blocks above); sample_rows cuts a sparse tensor as a slice cuts the
    dense one, a stop past the rows and a negative start included (SC10 indexed rows that are not there)."""
    x = torch.arange(36.0).view(6, 6) % 4
    assert block_rows(x.to_sparse_bsr((2, 3))) == 2 and block_rows(x.to_sparse_bsc((3, 2))) == 3
    cut = sparse_rows(x.to_sparse_bsr((2, 3)), [4, 5, 0, 1])
    assert cut.values().shape[1:3] == (2, 3) and torch.equal(cut.to_dense(), x[[4, 5, 0, 1]])
    with pytest.raises(ValueError, match=r"blocks of 3 rows: 2 of its rows"):
        sparse_rows(x.to_sparse_bsc((3, 2)), [0, 1])
    for to_sparse in LAYOUTS.values():
        for start, stop in ((4, 10), (-3, 5), (0, 6)):
            out = sample_rows(to_sparse(x), start, stop)
            assert out.layout == to_sparse(x).layout and torch.equal(out.to_dense(), x[start:stop])


def test_a_block_sparse_batch_gets_sub_batches_of_whole_blocks_or_none():
    x = torch.ones(300, 4)
    y = torch.zeros(300)
    x320, y320 = torch.ones(320, 4), torch.zeros(320)
    # 300 // 16 = 18 rows is 9 blocks of 2, 300 // 4 = 75 is not: "auto" takes the difference level
    assert coarse_levels((x.to_sparse_bsr((2, 2)), y), "auto") == [(FINITE_DIFFERENCE, 3e-3)]
    assert coarse_levels((x320.to_sparse_bsr((2, 2)), y320), "auto") == [(FINITE_DIFFERENCE, 3e-3), (20, 3e-3),
                                                                          (80, 3e-3)]
    assert coarse_levels((x.to_sparse_bsr((2, 2)), y), [(16, 1e-2)]) == [(18, 1e-2)]
    with pytest.raises(ValueError, match=r"coarse level \(4, 0.01\): its 75 samples cut a block-sparse batch"):
        coarse_levels((x.to_sparse_bsr((2, 2)), y), [(4, 1e-2)])


def _distributed(rank, world, layout):
    model, x, y = _problem(400)
    lo = rank * 200
    return catapult.sharpness(model, torch.nn.MSELoss(), (LAYOUTS[layout](x[lo:lo + 200]), y[lo:lo + 200]),
                              distributed=True).value


@pytest.mark.slow  # two spawned interpreters importing torch
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_distributed_shards_of_a_sparse_batch(layout):
    from gloo_ranks import on_ranks

    model, x, y = _problem(400)
    whole = catapult.sharpness(model, torch.nn.MSELoss(), (x, y)).value
    for value in on_ranks(_distributed, layout):
        assert value == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("name", ["coo", "csr", "bsr", "csc batched"])
def test_a_list_of_floats_is_refused_and_a_tuple_is_rows_on_dense_and_sparse_tensors(name):
    """A list of floats was truncated to rows on every layout ([2.7, 3.1, 6.0, 7.0]: rows 2, 3, 6, 7),
    as a float tensor is refused; a tuple of rows was the entry t[2, 3] of a dense tensor (indexing
    its dims) and rows 2, 3 of a sparse one. Truth: NumPy's integer indexing of the rows."""
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    rows = [2, 3, 6, 7]
    truth = torch.from_numpy(dense.numpy()[rows])
    for index in ([2.7, 3.1, 6.0, 7.0], (2.0, 3.0, 6.0, 7.0)):
        for tree in (dense, sparse):
            with pytest.raises(ValueError, match=r"sample_index: an index of dtype .*float"):
                sample_index(tree, index)
        with pytest.raises(ValueError, match=r"sparse_rows: an index of dtype .*float"):
            sparse_rows(sparse, index)
    for index in (tuple(rows), (3, 2), (7, 6)):
        want = torch.from_numpy(dense.numpy()[list(index)])
        assert torch.equal(sample_index(dense, index), want)
        assert torch.equal(sample_index(sparse, index).to_dense(), want)
        assert torch.equal(sparse_rows(sparse, index).to_dense(), want)
    assert torch.equal(sample_index(dense, list(rows)), truth)
    empty = (0, *dense.shape[1:])                          # no rows: [] is not a float index
    assert sample_index(dense, []).shape == sample_index(sparse, []).shape == empty


@pytest.mark.parametrize("name", ["coo", "coo hybrid", "coo 3-d", "csr", "csc", "bsr", "bsc", "csr hybrid",
                                  "csr batched", "bsr batched", "csc batched"])
def test_a_scalar_index_is_refused_alike_on_dense_and_sparse_tensors(name):
    """A scalar index (an int, a 0-d tensor, a NumPy integer, a bool) dropped a dense tensor's sample
    dimension (``t[3]``: shape (4,); ``t[True]`` added one) and was torch's IndexError or a TypeError of
    ``len()`` on every sparse layout; rows of two dimensions shaped a dense batch (1, 2, ...) and failed on
    sparse ones. Both are now one ValueError naming the index and the rule, on either layout, before any
    indexing; ``[3]`` (a list of one row) is sample 3 on both, as NumPy's ``a[[3]]`` reads it."""
    x = torch.arange(40.0).view(10, 4) % 3
    sparse, dense = _layouts(x)[name]
    # the rule's example is the user's own row where the index is an integer ([2] for 2), [3] otherwise
    for index, row in ((3, 3), (2, 2), (torch.tensor(5), 5), (np.int64(7), 7), (np.array(4), 4), (-1, -1),
                       (True, None), (2.0, None)):
        example = re.escape(f"([{row if row is not None else 3}] for sample {row if row is not None else 3} alone)")
        for tree in (dense, sparse, {"x": sparse}):
            with pytest.raises(ValueError, match=rf"sample_index: the index .* is a scalar, not rows of "
                                                 rf"samples .*{example}"):
                sample_index(tree, index)
        with pytest.raises(ValueError, match=rf"sparse_rows: the index .* is a scalar.*{example}"):
            sparse_rows(sparse, index)
    for index in (torch.tensor([[2, 3]]), [[2, 3]], np.array([[2, 3]])):
        for tree in (dense, sparse):
            with pytest.raises(ValueError, match=r"sample_index: the index .* is rows of 2 dimensions"):
                sample_index(tree, index)
    if name in ("bsr", "bsc"):           # (blocks of 2 rows: one row is not a whole block)
        rows, truth = [2, 3], torch.from_numpy(dense.numpy()[[2, 3]])
    else:
        rows, truth = [3], torch.from_numpy(dense.numpy()[[3]])
    assert truth.shape[0] == len(rows)
    assert torch.equal(sample_index(dense, rows), truth)
    assert torch.equal(sample_index(sparse, rows).to_dense(), truth)
    assert torch.equal(sparse_rows(sparse, np.array(rows)).to_dense(), truth)
