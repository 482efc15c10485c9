"""A run's data (:mod:`catapult.engine.run_data`) at its edges: a flattened sample's size, which key
a token-shard refusal names, and a batch as large as the training set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.config import ConfigError, validate
from catapult.engine.run_data import BatchStream, load_data


def test_in_features_is_a_flattened_samples_size_not_its_last_dimension():
    # Mutation pass 22 (RD4): digits samples are (1, 8, 8): 64 inputs, not 8
    data = load_data(validate({"data": {"name": "digits", "n_train": 20, "n_test": 10}}))
    assert tuple(data.x_train.shape[1:]) == (1, 8, 8)
    assert data.in_features == 64 and data.num_classes == 10


@pytest.mark.parametrize("tokenizer, key", [("none", "data.tokenizer"), ("char", "data.root")])
def test_token_shards_are_refused_naming_the_key_that_made_them_shards(tmp_path, tokenizer, key):
    # Mutation pass 22 (RD5): tokenizer none reads any root as shards (its key is the one to change);
    # a char corpus root that holds only arrays is the root's problem
    np.save(tmp_path / "part0.npy", np.arange(64, dtype=np.uint16))
    config = validate({"data": {"name": "text", "root": str(tmp_path), "tokenizer": tokenizer, "context": 8},
                       "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2}, "loss": "cross_entropy"})
    with pytest.raises(ConfigError) as caught:
        load_data(config)
    assert [k for k, _ in caught.value.problems] == [key] and "is read as token shards" in caught.value.problems[0][1]


def test_a_batch_as_large_as_the_training_set_is_one_permutation_of_it_per_epoch():
    # Mutation pass 22 (RD10): batch_size == n is allowed (one batch per epoch), n + 1 is refused
    x, y = torch.arange(8.0).reshape(4, 2), torch.arange(4)
    stream = BatchStream(x, y, 4, seed=0)
    for t in range(3):
        xb, yb = stream.batch(t)
        assert sorted(yb.tolist()) == [0, 1, 2, 3] and torch.equal(xb, x[yb])
    with pytest.raises(ConfigError, match="train.batch_size"):
        BatchStream(x, y, 5, seed=0)


def test_a_step_of_an_earlier_epoch_is_refused_not_read_from_the_later_permutation():
    # Mutation pass 22 (RD12): 2 batches an epoch; step 1 (epoch 0) after step 2 (epoch 1)
    x, y = torch.arange(8.0).reshape(4, 2), torch.arange(4)
    stream = BatchStream(x, y, 2, seed=0)
    stream.batch(0), stream.batch(2)
    with pytest.raises(ValueError, match="non-decreasing steps"):
        stream.batch(1)


def test_augmentation_without_minibatches_is_refused_naming_data_augment():
    # Mutation pass 22 (RD15): full-batch GD trains on the fixed data
    from catapult.data import Augment

    x, y = torch.zeros(4, 3, 8, 8), torch.arange(4)
    with pytest.raises(ConfigError, match="data.augment"):
        BatchStream(x, y, None, seed=0, augment=Augment(flip=True, crop=0, mixup=0.0, num_classes=4, seed=0))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_cifar_training_sets_hold_50000_images_and_the_test_sets_10000(name):
    # Mutation pass 22c (RD7): the standard archive's counts, known without reading it
    from catapult.engine.run_data import check_image_counts

    check_image_counts({"name": name, "n_train": 50000, "n_test": 10000})
    for n_train, n_test in ((50001, None), (None, 10001)):
        with pytest.raises(ConfigError) as caught:
            check_image_counts({"name": name, "n_train": n_train, "n_test": n_test})
        assert [k for k, _ in caught.value.problems] == ["data"] and f"{name} ({'train' if n_train else 'test'})" in str(caught.value)


def test_first_batches_are_the_stream_order_without_augmentation():
    # Mutation pass 22c (RD13): lambda_0's batches are the training order's, never flipped
    from catapult.data import Augment

    x, y = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    stream = BatchStream(x, y, 4, seed=0, augment=Augment(flip=True, crop=0, mixup=0.0, num_classes=8, seed=0))
    first = stream.first_batches(2)
    assert sorted(torch.cat([yb for _, yb in first]).tolist()) == list(range(8))
    for t, (xb, yb) in enumerate(first):
        assert torch.equal(xb, x[yb])   # the images as stored
        assert torch.equal(stream.batch(t)[1], yb)   # the same order as the training stream's
    assert any(not torch.equal(stream.batch(t)[0], x[stream.batch(t)[1]]) for t in range(2))   # which flips
