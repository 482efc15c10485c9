"""Split container, helpers, the embedded digits dataset and the dataset registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

import catapult
from catapult.data import (DATASETS, Split, first_n, load_dataset, load_digits, one_hot,
                           standardize_per_sample)


@pytest.fixture(scope="module")
def digits() -> Split:
    return load_digits()


@pytest.fixture(scope="module")
def sk_digits():
    return sk_load_digits()


def _np_standardize(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1, keepdims=True)  # population std (ddof=0)
    return ((flat - mean) / std).reshape(a.shape)


def test_digits_shapes_and_dtypes(digits):
    assert catapult.data.load_digits is load_digits
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.x_train.shape == (1497, 1, 8, 8) and digits.x_test.shape == (300, 1, 8, 8)
    assert digits.y_train.shape == (1497,) and digits.y_test.shape == (300,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.in_features == 64 and digits.sample_shape == (1, 8, 8)
    assert digits.classes == tuple("0123456789")
    # every class present in both parts
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())


def test_digits_split_is_the_documented_fixed_split(sk_digits):
    raw = load_digits(standardize=False)
    np.testing.assert_allclose(raw.x_train.numpy() * 16, sk_digits.images[:1497, None], atol=1e-5)
    np.testing.assert_allclose(raw.x_test.numpy() * 16, sk_digits.images[1497:, None], atol=1e-5)
    np.testing.assert_array_equal(raw.y_train.numpy(), sk_digits.target[:1497])
    np.testing.assert_array_equal(raw.y_test.numpy(), sk_digits.target[1497:])
    again = load_digits(standardize=False)
    assert torch.equal(raw.x_train, again.x_train) and torch.equal(raw.y_test, again.y_test)


def test_digits_standardised_per_sample(digits, sk_digits):
    x = digits.x_train.reshape(1497, -1).double()
    torch.testing.assert_close(x.mean(1), torch.zeros(1497, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(1, correction=0), torch.ones(1497, dtype=torch.float64), atol=1e-5, rtol=0)
    expected = _np_standardize(sk_digits.images[1497:, None])
    np.testing.assert_allclose(digits.x_test.numpy(), expected, atol=1e-5)


def test_digits_first_n(digits):
    small = load_digits(100, 20)
    assert small.n_train == 100 and small.n_test == 20
    assert torch.equal(small.x_train, digits.x_train[:100]) and torch.equal(small.y_test, digits.y_test[:20])
    with pytest.raises(ValueError, match="n_train=1498 exceeds the 1497"):
        load_digits(n_train=1498)
    with pytest.raises(ValueError, match="n_test"):
        load_digits(n_test=-1)
    with pytest.raises(ValueError, match="^n_train must be None or an integer >= 0; got 2.5$"):
        load_digits(n_train=2.5)


def test_split_subset_and_to(digits):
    sub = digits.subset(n_train=7)
    assert torch.equal(sub.x_train, digits.x_train[:7]) and torch.equal(sub.y_train, digits.y_train[:7])
    assert sub.n_test == 300 and sub.classes == digits.classes
    assert digits.subset(0, 0).n_train == 0
    with pytest.raises(ValueError, match="n_test=301"):
        digits.subset(n_test=301)
    with pytest.raises(ValueError, match="^n_train must be None or an integer >= 0; got True$"):
        digits.subset(n_train=True)
    moved = sub.to("cpu", torch.float64)
    assert moved.x_train.dtype == torch.float64 and moved.x_test.dtype == torch.float64
    assert moved.y_train.dtype == torch.int64
    assert torch.equal(moved.x_train.float(), sub.x_train)   # float32 -> float64 -> float32 is exact
    with pytest.raises(TypeError, match="floating"):
        sub.to(dtype=torch.int32)
    x, y = sub.train
    assert x is sub.x_train and y is sub.y_train
    assert "digits" in repr(sub) and "(7, 1, 8, 8)" in repr(sub)


def test_split_validates_its_contents():
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 1])
    Split(x, y, x, y, num_classes=3, name="ok")
    with pytest.raises(ValueError, match="3 labels"):
        Split(x, y[:3], x, y, num_classes=3, name="bad")
    with pytest.raises(ValueError, match="num_classes=2"):
        Split(x, y, x, y, num_classes=2, name="bad")
    with pytest.raises(TypeError, match="int64"):
        Split(x, y.int(), x, y, num_classes=3, name="bad")
    with pytest.raises(ValueError, match="sample"):
        Split(x, y, torch.zeros(4, 5), y, num_classes=3, name="bad")


def test_standardize_per_sample_matches_numpy_and_handles_constant_samples():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 4, generator=gen) * 7 + 2
    np.testing.assert_allclose(standardize_per_sample(x).numpy(), _np_standardize(x.numpy()), atol=1e-5)
    const = standardize_per_sample(torch.full((2, 6), 3.0))
    assert torch.equal(const, torch.zeros(2, 6))
    assert standardize_per_sample(torch.arange(8, dtype=torch.uint8).reshape(2, 4)).dtype == torch.float32


def test_first_n_and_one_hot():
    t = torch.arange(10)
    assert torch.equal(first_n(t, 3), t[:3]) and torch.equal(first_n(t, None), t)
    with pytest.raises(ValueError, match="exceeds"):
        first_n(t, 11)
    labels = torch.tensor([2, 0, 1])
    expected = torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    assert torch.equal(one_hot(labels, 4), expected)
    assert one_hot(labels, 4, torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        one_hot(labels, 2)


def test_load_dataset_registry(digits):
    assert DATASETS == ("digits", "cifar10", "cifar100", "shakespeare", "text")
    small = load_dataset("digits", n_train=12, n_test=3)
    assert torch.equal(small.x_train, digits.x_train[:12]) and small.n_test == 3
    with pytest.raises(ValueError, match="allowed: digits, cifar10, cifar100, shakespeare, text"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("digits", root="/somewhere")
    with pytest.raises(TypeError):
        load_dataset("digits", colour=True)


def test_loading_digits_leaves_pythons_global_rng_alone():
    # the first load imports scikit-learn, whose import (through rich) drew getrandbits(24) from
    # Python's global RNG: a user's random.random() after a first run on digits changed
    import subprocess
    import sys

    script = ("import random\n"
              "random.seed(7); expected = [random.random() for _ in range(3)]\n"
              "random.seed(7)\n"
              "from catapult.data import load_digits\n"
              "load_digits(n_train=4, n_test=4)\n"
              "assert 'sklearn' in __import__('sys').modules\n"
              "print([random.random() for _ in range(3)] == expected)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_standardize_per_sample_refuses_complex_and_non_tensors():
    """A complex sample lost its imaginary part (1+1j, 2 -> -1, 1, as if 1, 2), with only NumPy's
    ComplexWarning; a NumPy array raised AttributeError ('is_floating_point')."""
    x = torch.tensor([[3.0, 1.0, 2.0]])
    ref = (np.array([3.0, 1.0, 2.0]) - 2.0) / np.sqrt(2.0 / 3.0)
    assert np.allclose(standardize_per_sample(x).numpy(), ref)
    with pytest.raises(TypeError, match="x must be a real tensor .*complex64"):
        standardize_per_sample(torch.tensor([[1 + 1j, 2 + 0j]]))
    with pytest.raises(TypeError, match="x must be a real tensor .*ndarray"):
        standardize_per_sample(np.ones((2, 3)))


def test_one_hot_checks_num_classes_and_label_shape():
    """num_classes=-1 said "labels must lie in [0, -1)", 2.5 raised torch's "must be int, not
    float", and labels of shape (1, 2) came back (1, 2, 2), not the documented (N, num_classes)."""
    assert one_hot(torch.tensor([2, 0]), np.int64(3)).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    for k in (-1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=rf"^one_hot num_classes must be an integer >= 1; got {k!r}$"):
            one_hot(torch.tensor([0, 1]), k)
    with pytest.raises(ValueError, match=r"one_hot: labels must be a 1-d tensor .*\(1, 2\)"):
        one_hot(torch.tensor([[0, 1]]), 2)
    with pytest.raises(ValueError, match="labels must be a 1-d tensor .*list"):
        one_hot([0, 1], 2)


def test_counts_take_numpy_integers():
    """n_train=np.int64(100) was refused ("n_train must be an int or None, got np.int64(100)"),
    though the solvers' counts take NumPy integers (catapult.arguments.as_integer)."""
    x = torch.arange(10.0)
    assert first_n(x, np.int64(3)).tolist() == [0.0, 1.0, 2.0]
    assert first_n(x, torch.tensor(2)).tolist() == [0.0, 1.0]
    for bad in (2.0, True, "3"):
        with pytest.raises(ValueError, match=rf"^n must be None or an integer >= 0; got {bad!r}$"):
            first_n(x, bad)
    with pytest.raises(ValueError, match="first_n: tensor must have a first"):
        first_n(torch.tensor(5.0), 1)


def test_a_count_of_exactly_the_samples_available_is_all_of_them():
    """n == available is the whole tensor, n + 1 is refused (mutation pass 22b, DS4: ``n >= available``
    refused the count a user gives for 'all', e.g. load_digits(n_train=1497))."""
    t = torch.arange(10)
    assert torch.equal(first_n(t, 10), t)
    with pytest.raises(ValueError, match="^n=11 exceeds the 10 samples available in the data$"):
        first_n(t, 11)


def test_class_names_must_name_every_class():
    """classes has num_classes names, no fewer or more (mutation pass 22b, DS9: without the check
    Split kept 2 names for 3 classes, and classes[2] named no label)."""
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 1])
    assert Split(x, y, x, y, num_classes=3, name="ok", classes=["a", "b", "c"]).classes == ("a", "b", "c")
    for names in (("a", "b"), ("a", "b", "c", "d")):
        with pytest.raises(ValueError, match=rf"^bad: {len(names)} class names for 3 classes$"):
            Split(x, y, x, y, num_classes=3, name="bad", classes=names)


def test_one_hot_refuses_boolean_labels():
    """Boolean labels are no class labels (mutation pass 22b, DS11: without the bool check
    [True, False] came back as the rows of classes 1 and 0)."""
    with pytest.raises(TypeError, match=r"^one_hot expects integer class labels, got dtype torch\.bool$"):
        one_hot(torch.tensor([True, False]), 2)
