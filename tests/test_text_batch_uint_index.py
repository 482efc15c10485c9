"""get_batch / TextCorpus.batch on a memory-mapped uint16 / uint32 token cache: the windows are
cut by slicing and cast to int64 before they are stacked (as windows() does), never by indexing
the uint tensor with an index tensor (an index kernel torch's uint16 / uint32 lacked for years).
Truth: windows() of the text from each drawn start, and the NumPy array itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.data.text import TextCorpus, get_batch, windows
from catapult.data.token_cache import as_tensor, save_array, load_array

if not hasattr(torch, "uint16"):
    pytest.skip("torch before 2.3 maps no uint16: the ids are int32 there", allow_module_level=True)


class NoUintIndex(torch.Tensor):
    """A torch whose uint16 / uint32 tensors cannot be indexed with an index tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and args[0].dtype in (torch.uint16, torch.uint32):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) for i in index):
                raise RuntimeError(f"\"index_cpu\" not implemented for {args[0].dtype}")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_batches_of_a_mapped_uint_cache_equal_windows_from_their_starts(tmp_path, dtype):
    values = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, 400, dtype=np.int64)
    values[:3] = np.iinfo(dtype).max     # the largest ids: no sign turns up
    assert save_array(values.astype(dtype), tmp_path / "ids.npy")
    mapped = as_tensor(load_array(tmp_path / "ids.npy"))
    ids = mapped.as_subclass(NoUintIndex)
    corpus = TextCorpus(train=ids, val=ids, vocab=None, name="mapped")
    for draw in (lambda g: get_batch(ids, 6, 9, generator=g), lambda g: corpus.batch(6, 9, split="val", generator=g)):
        x, y = draw(torch.Generator().manual_seed(3))
        starts = torch.randint(400 - 9, (6,), generator=torch.Generator().manual_seed(3)).tolist()
        assert x.dtype == y.dtype == torch.int64 and tuple(x.shape) == (6, 9)
        for b, s in enumerate(starts):
            wx, wy = windows(mapped[s:], 9, 1)
            assert x[b].tolist() == wx[0].tolist() == values[s: s + 9].tolist()
            assert y[b].tolist() == wy[0].tolist() == values[s + 1: s + 10].tolist()
