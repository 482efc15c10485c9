"""The samples of a batch (dim 0 of its tensors, in nested inputs and targets): counted, cut
into rows, indexed, located; what micro-batches, the coarse start and the distributed operators
cut a batch with.
"""
from __future__ import annotations

import torch

from catapult.curvature.batch_tree import leaf_paths, map_tensors

__all__ = ["sample_count", "sample_count_or_none", "sample_device", "sample_index", "sample_leaves", "sample_rows",
           "shares_samples", "sparse_rows", "block_rows"]


def sample_leaves(tree) -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` of the tensor leaves with a sample dimension (dim >= 1) of nested
    inputs or targets (:func:`~catapult.curvature.batch_tree.map_tensors`' containers: a model
    taking several inputs, an HF-style ``{"input_ids": ..., "attention_mask": ...}``); ``path`` as
    ``['input_ids']``, ``[0]`` or ``.ids``.

    >>> [(path, tuple(t.shape)) for path, t in sample_leaves({"ids": torch.zeros(3, 2), "scale": torch.tensor(2.0)})]
    [("['ids']", (3, 2))]
    """
    return [(path, t) for path, t in leaf_paths(tree) if t.dim() >= 1]


def sample_count(tree, what: str = "inputs", option: str = "chunk_size") -> int:
    """The number of samples (dim 0) of a batch's ``inputs`` or ``targets``: a tensor, or tuples,
    lists, dicts (:func:`map_tensors`' containers) of them, whose tensors with a dim 0 all have the same length (0-d tensors and
    other leaves, such as flags, go whole to every micro-batch); else a ValueError naming ``what``,
    the leaves that differ and ``option``, the setting that needs the count.

    >>> sample_count({"input_ids": torch.zeros(6, 4), "attention_mask": torch.ones(6, 4), "flag": True})
    6
    >>> sample_count((torch.zeros(6, 2), torch.zeros(5)))
    Traceback (most recent call last):
    ValueError: chunk_size: the batch's inputs have different sample counts (dim 0): [0] has 6, [1] has 5
    """
    leaves = sample_leaves(tree)
    if not leaves:
        raise ValueError(f"{option} needs the batch's {what} to hold tensors with a sample "
                         f"dimension (dim 0)")
    counts = {int(t.shape[0]) for _, t in leaves}
    if len(counts) > 1:
        shown = ", ".join(f"{path or what} has {t.shape[0]}" for path, t in leaves[:6])
        raise ValueError(f"{option}: the batch's {what} have different sample counts (dim 0): {shown}")
    return counts.pop()


def sample_count_or_none(tree) -> int | None:
    """:func:`sample_count` of ``tree``, or None where it has no one sample count (no tensor with
    a dim 0, or tensors that differ there).

    >>> sample_count_or_none(torch.zeros(5, 2)), sample_count_or_none({"ids": torch.zeros(5, 3)}), sample_count_or_none(3.0)
    (5, 5, None)
    """
    try:
        return sample_count(tree)
    except ValueError:
        return None


def shares_samples(tree, n: int) -> bool:
    """Whether ``tree`` (a batch's targets) goes with inputs of ``n`` samples when they are cut
    into pieces: its tensors with a dim 0 have ``n`` rows (:func:`sample_count`), or it has none
    and goes whole to every piece (``None`` targets, with the labels inside an HF-style input dict
    and the loss in the model's output; a 0-d target).

    >>> shares_samples({"labels": torch.zeros(4, 3)}, 4), shares_samples(None, 4), shares_samples(torch.zeros(5), 4)
    (True, True, False)
    """
    return sample_device(tree) is None or sample_count_or_none(tree) == n


def sample_rows(tree, start: int, stop: int):
    """Samples ``start:stop`` of nested inputs or targets (see :func:`sample_count`): every tensor
    with a dim 0 sliced there, everything else as it is.

    >>> sample_rows({"ids": torch.arange(6).view(3, 2), "scale": torch.tensor(2.0)}, 1, 3)
    {'ids': tensor([[2, 3],
            [4, 5]]), 'scale': tensor(2.)}
    """
    def cut(t):
        if t.dim() < 1:
            return t
        if t.layout != torch.strided:
            return sparse_rows(t, torch.arange(*slice(start, stop).indices(int(t.shape[0]))))
        return t[start:stop]

    return map_tensors(cut, tree)


def sample_index(tree, index):
    """Samples ``index`` of nested inputs or targets (see :func:`sample_count`): every tensor with a
    dim 0 indexed there, contiguous, everything else as it is. ``index``: a list or 1-d integer
    tensor of rows (in that order, repeats allowed: a copy; a tuple is a list), a ``slice`` (rows every ``step``-th:
    copied where they are not contiguous), or a boolean mask (a list or 1-d tensor of bools, one a
    sample: the rows where it is true, as ``t[mask]`` reads it) -- the same rows for dense and
    sparse tensors (a mask of another length is a ValueError, as is a tensor, array or list of uint8 or
    float entries: torch reads uint8 as a mask, NumPy as rows; floats were truncated to rows). A scalar
    index (``3``, ``torch.tensor(3)``, ``np.int64(3)``, ``True``) or rows of two dimensions is a ValueError
    too: it would drop (or add) a dense tensor's sample dimension and has no sparse reading; ``[3]`` is sample 3.

    >>> sample_index({"ids": torch.arange(6).view(3, 2), "flag": True}, [2, 0])
    {'ids': tensor([[4, 5],
            [0, 1]]), 'flag': True}
    >>> sample_index(torch.arange(6), slice(0, 6, 2))
    tensor([0, 2, 4])
    >>> sample_index(torch.arange(3), [True, False, True]), sample_index(torch.arange(3).to_sparse(), [True, False, True]).to_dense()
    (tensor([0, 2]), tensor([0, 2]))
    >>> sample_index(torch.arange(3), 2)
    Traceback (most recent call last):
    ValueError: sample_index: the index 2 is a scalar, not rows of samples (dim 0): it would drop or add a sample dimension of a dense tensor, and has no reading on a sparse one; give a list or 1-d tensor of rows ([2] for sample 2 alone), a slice or a 1-d bool mask
    """
    mask = _mask_or_none(index)
    if mask is None:
        _refuse_not_rows(index, "sample_index")
        _refuse_row_dtype(index, "sample_index")
    if isinstance(index, tuple):   # rows, as a list: t[(0, 1)] is the entry t[0, 1] of a dense tensor, rows 0, 1 of a sparse one
        index = list(index)
    if mask is not None:
        def pick(t):
            return t[_mask_rows(mask, int(t.shape[0]), "sample_index").to(t.device)]
        index = mask
    elif torch.is_tensor(index):
        def pick(t):
            return t[index.to(t.device)]
    elif isinstance(index, slice):
        def pick(t):
            return t[index].contiguous()
    else:
        def pick(t):
            return t[index]

    def cut(t):
        if t.dim() < 1:
            return t
        if t.layout == torch.strided:
            return pick(t)
        rows = (torch.arange(*index.indices(int(t.shape[0]))) if isinstance(index, slice)
                else _mask_rows(mask, int(t.shape[0]), "sample_index") if mask is not None
                else torch.as_tensor(index, dtype=torch.long))
        return sparse_rows(t, rows)

    return map_tensors(cut, tree)


def _mask_or_none(index) -> torch.Tensor | None:
    """``index`` as a bool tensor where it is a boolean mask (a bool tensor, a list or array of
    bools), else None (rows, a slice): ``torch.as_tensor`` of ``[True, False]`` as integers is
    rows 1 and 0, where ``t[[True, False]]`` is a mask."""
    if torch.is_tensor(index):
        return index if index.dtype == torch.bool else None
    if not isinstance(index, (list, tuple)) and not hasattr(index, "__array__"):
        return None
    try:
        index = torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):   # (rows of mixed types: indexing says what is wrong)
        return None
    return index if index.dtype == torch.bool else None


def _refuse_not_rows(index, where: str) -> None:
    """A ValueError where ``index`` (not a boolean mask) is a scalar (an int, a 0-d tensor or array,
    a NumPy integer, a bool, ``None``, ``...``) or rows of two or more dimensions: on a dense tensor
    ``t[3]`` drops the sample dimension (dim 0), ``t[True]`` and ``t[None]`` add one, ``t[[[1, 2]]]``
    shapes the samples (1, 2), and a sparse tensor has no such reading (torch's IndexError, a
    TypeError of ``len()``); what is kept is rows of samples: a slice, a 1-d list, tensor or array of rows."""
    if isinstance(index, slice):
        return
    if index is None or index is Ellipsis or isinstance(index, (bool, int, float, complex)):
        shape = "a scalar"
    elif torch.is_tensor(index) or isinstance(index, (list, tuple)) or hasattr(index, "__array__"):
        try:
            dims = index.dim() if torch.is_tensor(index) else torch.as_tensor(index).dim()
        except (TypeError, ValueError, RuntimeError):   # (rows of mixed types: indexing says what is wrong)
            return
        if dims == 1:
            return
        shape = "a scalar" if dims == 0 else f"rows of {dims} dimensions"
    else:
        return
    shown = repr(index) if len(repr(index)) <= 40 else repr(index)[:37] + "..."
    row = _integer_or_none(index)
    example = f"[{row}] for sample {row} alone" if row is not None else "[3] for sample 3 alone"
    raise ValueError(f"{where}: the index {shown} is {shape}, not rows of samples (dim 0): it would drop or add a "
                     f"sample dimension of a dense tensor, and has no reading on a sparse one; give a list or 1-d "
                     f"tensor of rows ({example}), a slice or a 1-d bool mask")


def _integer_or_none(index):
    """The Python int a scalar integer index names (``2``, ``torch.tensor(2)``, ``np.int64(2)``,
    ``np.array(2)``), or None for anything else (a bool, a float, None, rows)."""
    if isinstance(index, bool) or (torch.is_tensor(index) and index.dtype == torch.bool):
        return None
    if isinstance(index, int):
        return int(index)
    if torch.is_tensor(index):
        if index.dim() == 0 and not index.dtype.is_floating_point and not index.dtype.is_complex:
            return int(index.item())
        return None
    dtype = getattr(index, "dtype", None)
    if getattr(index, "ndim", None) == 0 and getattr(dtype, "kind", None) in ("i", "u"):
        return int(index)
    return None


def _refuse_row_dtype(index, where: str) -> None:
    """A ValueError where ``index`` is a tensor or array of uint8 or floating entries: torch reads a
    uint8 index as a mask on dense tensors (deprecated) and NumPy as rows, which the sparse rows
    took (``[1, 0, 1, 0]``: rows 0 and 2 of a dense batch, rows 1, 0, 1, 0 of its sparse copy); a
    float tensor was torch's IndexError on dense tensors and truncated to rows on sparse ones."""
    if torch.is_tensor(index):
        dtype = index.dtype
    elif isinstance(index, (list, tuple)) or (hasattr(index, "__array__") and hasattr(index, "dtype")):
        # a list of floats too: [0.7, 2.9] was rows 0 and 2 on either layout (torch truncates it as NumPy did)
        if isinstance(index, (list, tuple)) and not index:
            return                                    # no rows (torch.as_tensor([]) is float)
        try:
            dtype = torch.as_tensor(index).dtype
        except (TypeError, ValueError, RuntimeError):   # (an object array: indexing says what is wrong)
            return
    else:
        return
    if dtype == torch.uint8 or dtype.is_floating_point or dtype.is_complex:
        raise ValueError(f"{where}: an index of dtype {dtype} picks samples (dim 0) ambiguously or not at all: "
                         f"give a bool mask (one entry a sample) or integer rows")


def _mask_rows(mask: torch.Tensor, n: int, where: str) -> torch.Tensor:
    """The rows where a boolean ``mask`` of ``n`` samples is true; a ValueError where it has
    another shape."""
    if mask.dim() != 1 or int(mask.shape[0]) != n:
        raise ValueError(f"{where}: a boolean mask of shape {tuple(mask.shape)} for {n} samples (dim 0): it needs "
                         f"one entry a sample")
    return mask.nonzero().squeeze(1)


def sparse_rows(t: torch.Tensor, rows) -> torch.Tensor:
    """Rows ``rows`` (dim 0; a 1-d integer tensor or a list, in that order, repeats allowed; or a
    boolean mask, one entry a row, as :func:`sample_index` reads it) of a sparse tensor, in its own layout: COO by ``index_select``; CSR, CSC, BSR and BSC through COO and
    back, or where dim 0 is a batch dimension (a 3-d CSR) by cutting its index and value tensors.
    torch indexes and slices none of them along dim 0 (``t[rows]``: "Could not run 'aten::index'
    ... 'SparseCPU'", CSR "do not have strides"), which is what failed :func:`sample_index`'s
    sub-batches of the coarse start (``sharpness`` on 256 or more sparse samples).

    >>> x = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    >>> [sparse_rows(s, [2, 0]).to_dense().tolist() for s in (x.to_sparse(), x.to_sparse_csr())]
    [[[0.0, 3.0], [0.0, 1.0]], [[0.0, 3.0], [0.0, 1.0]]]
    >>> sparse_rows(x.to_sparse_csr(), [1]).layout
    torch.sparse_csr
    """
    mask = _mask_or_none(rows)
    if mask is None:
        _refuse_not_rows(rows, "sparse_rows")
        _refuse_row_dtype(rows, "sparse_rows")
    rows = (torch.as_tensor(rows, dtype=torch.long) if mask is None else
            _mask_rows(mask, int(t.shape[0]), "sparse_rows")).to(t.device)
    if t.layout == torch.sparse_coo:
        return t.index_select(0, rows)
    row_major = t.layout in (torch.sparse_csr, torch.sparse_bsr)
    if t.dim() - t.dense_dim() > 2:   # batch dimensions first: each index and value tensor has them
        compressed, plain = ((t.crow_indices(), t.col_indices()) if row_major else (t.ccol_indices(), t.row_indices()))
        return torch.sparse_compressed_tensor(compressed.index_select(0, rows), plain.index_select(0, rows),
                                              t.values().index_select(0, rows), size=(len(rows), *t.shape[1:]),
                                              layout=t.layout, dtype=t.dtype, device=t.device,
                                              # whole batches of a valid tensor: valid (left implicit, torch
                                              # warned once a process 'Sparse invariant checks are implicitly disabled')
                                              check_invariants=False)
    block = block_rows(t)
    if len(rows) % block:
        raise ValueError(f"a {t.layout} tensor holds blocks of {block} rows: {len(rows)} of its rows (dim 0) are "
                         f"not a whole number of blocks")
    blocked = t.layout in (torch.sparse_bsr, torch.sparse_bsc)
    return t.to_sparse().index_select(0, rows).to_sparse(layout=t.layout,
                                                         blocksize=tuple(t.values().shape[1:3]) if blocked else None)


def block_rows(t: torch.Tensor) -> int:
    """The rows (dim 0) of one block of a BSR or BSC tensor whose dim 0 is a row dimension (no
    batch dimensions): a cut of its rows (:func:`sparse_rows`) must hold a multiple of them; 1 for
    every other tensor.

    >>> block_rows(torch.ones(4, 4).to_sparse_bsr((2, 2))), block_rows(torch.ones(4, 4).to_sparse_csr())
    (2, 1)
    """
    if t.layout in (torch.sparse_bsr, torch.sparse_bsc) and t.dim() - t.dense_dim() == 2:
        return int(t.values().shape[1])
    return 1


def sample_device(tree) -> torch.device | None:
    """The device of the first tensor with a sample dimension (dim 0) of nested inputs or targets
    (see :func:`sample_count`), or None where there is none.

    >>> sample_device({"flag": True, "ids": torch.zeros(2, 3)}), sample_device(3.0)
    (device(type='cpu'), None)
    """
    leaves = sample_leaves(tree)
    return leaves[0][1].device if leaves else None
