"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (no download needed).

scikit-learn ships 1,797 real 8x8 grey-scale digit images (the test part of the UCI
"Optical Recognition of Handwritten Digits" set), pixel values 0..16, 10 classes. They are
stored cycling through the classes, so contiguous blocks are class-balanced.

Fixed split, no random numbers involved: the first 1,497 samples (in scikit-learn's order) are
the training set and the last 300 the test set. A contiguous tail rather than a shuffled one
keeps it identical on every platform and library version, and tends to keep writers apart
between train and test.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from catapult.arguments import check_flag
from catapult.data.split import Split, check_count, standardize_per_sample

__all__ = ["load_digits", "DIGITS_N_TRAIN", "DIGITS_N_TEST"]

DIGITS_N_TEST = 300
DIGITS_N_TRAIN = 1797 - DIGITS_N_TEST


def load_digits(n_train: int | None = None, n_test: int | None = None, *,
                standardize: bool = True) -> Split:
    """scikit-learn's digits as a `Split`: 1,497 train / 300 test images, 10 classes.

    Args:
        n_train, n_test: keep the first N samples of each part (None = all).
        standardize: per-sample standardisation ``x <- (x - mean(x)) / std(x)`` over each
            image's 64 pixels (population std); False gives ``x / 16`` in [0, 1].

    Returns inputs float32 of shape ``(N, 1, 8, 8)`` (one channel; models flatten to 64) and
    int64 labels 0..9. ``classes`` are ``("0", ..., "9")``.
    """
    standardize = check_flag("load_digits", "standardize", standardize)  # "no" standardized
    check_count(n_train, DIGITS_N_TRAIN, "n_train", "digits (train)")
    check_count(n_test, DIGITS_N_TEST, "n_test", "digits (test)")
    state = random.getstate()  # scikit-learn's first import draws from Python's global RNG (rich's
    try:                       # getrandbits at import), which changed a caller's later random draws
        from sklearn.datasets import load_digits as _sk_load_digits  # slow import, load lazily
    finally:
        random.setstate(state)

    bunch = _sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float64)).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    if images.shape[0] != DIGITS_N_TRAIN + DIGITS_N_TEST:
        raise RuntimeError(f"scikit-learn's digits have {images.shape[0]} samples, expected 1797")
    images = standardize_per_sample(images) if standardize else images / 16.0
    images = images.to(torch.float32)
    split = Split(
        x_train=images[:DIGITS_N_TRAIN].clone(), y_train=labels[:DIGITS_N_TRAIN].clone(),
        x_test=images[DIGITS_N_TRAIN:].clone(), y_test=labels[DIGITS_N_TRAIN:].clone(),
        num_classes=10, name="digits", classes=tuple(str(k) for k in range(10)),
    )
    return split.subset(n_train, n_test)
