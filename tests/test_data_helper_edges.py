"""Stop 54's data-helper checks at their edges (mutation pass 11): ``pad_crop_images`` with
``pad = 0`` is the identity, ``mixup_batch`` refuses integer weights and mis-shaped targets or
partners by name, ``get_batch`` refuses a batch or context of 0 and boolean ids, and
``load_dataset`` takes a text option passed at its default value for an image dataset. Truth:
closed forms and the documented refusals."""
from __future__ import annotations

import pytest
import torch

from catapult.data import load_dataset
from catapult.data.augment import mixup_batch, pad_crop_images
from catapult.data.text import get_batch


def test_pad_crop_with_no_padding_is_the_identity():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    zero = torch.zeros(2, dtype=torch.int64)
    assert torch.equal(pad_crop_images(x, 0, zero, zero), x)
    with pytest.raises(ValueError, match=r"rows must lie in 0..0"):
        pad_crop_images(x, 0, torch.tensor([0, 1]), zero)


def test_mixup_refuses_integer_weights_and_misshaped_targets_or_partners():
    x, t = torch.ones(2, 3), torch.eye(2)
    partner = torch.tensor([1, 0])
    assert mixup_batch(x, t, partner, torch.tensor([1.0, 0.0]))[1].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="mixup_batch: lam must be a float"):
        mixup_batch(x, t, partner, torch.tensor([1, 0]))  # integer weights
    with pytest.raises(TypeError, match="mixup_batch: targets must be floating-point soft targets"):
        mixup_batch(x, t.reshape(2, 2, 1), partner, 0.5)
    for bad in (torch.tensor([1]), torch.tensor([[1], [0]])):  # broadcast against the batch before
        with pytest.raises(TypeError, match=r"mixup_batch: partner must be an integer tensor of shape \(2,\)"):
            mixup_batch(x, t, bad, 0.5)


def test_get_batch_refuses_empty_sizes_and_boolean_ids():
    ids = torch.arange(20)
    assert [v.shape for v in get_batch(ids, 2, 3, generator=torch.Generator().manual_seed(0))] == [(2, 3), (2, 3)]
    for size, name in (((0, 3), "batch_size"), ((2, 0), "context")):
        with pytest.raises(ValueError, match=f"^get_batch {name} must be an integer >= 1; got 0$"):
            get_batch(ids, *size)
    with pytest.raises(TypeError, match="get_batch: ids must be an integer tensor of token ids, got torch.bool"):
        get_batch(ids > 5, 2, 3)


def test_an_image_dataset_takes_text_options_passed_at_their_defaults():
    data = load_dataset("digits", n_train=4, n_test=4, context=int("64"), val_fraction=float("0.1"),
                        tokenizer="".join(["ch", "ar"]), vocab_size=int("4096"), cache_dir=None)
    assert data.x_train.shape[0] == 4
    with pytest.raises(TypeError, match="val_fraction is a text option"):
        load_dataset("digits", n_train=4, n_test=4, val_fraction=0.2)
