import numpy as np
import pytest
import torch

from catapult.losses import LOSSES, accuracy, cross_entropy, get_loss, mse, one_hot


def _numpy_logsoftmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_mse_is_half_mean_over_batch_and_outputs_with_one_hot_labels():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    y = np.zeros((7, 5))
    y[np.arange(7), labels.numpy()] = 1.0
    expected = 0.5 * np.sum((out.numpy() - y) ** 2) / (7 * 5)
    assert mse(out, labels).item() == pytest.approx(expected, rel=1e-12)
    # float targets of the outputs' shape are used as given
    assert mse(out, torch.from_numpy(y)).item() == pytest.approx(expected, rel=1e-12)


def test_mse_hessian_wrt_outputs_is_identity_over_n_times_k():
    # d^2 L / d out^2 = I / (N K): the convention that fixes the scale of lambda_0.
    out = torch.zeros(3, 4, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda o: mse(o, torch.tensor([1, 0, 3])), out)
    assert torch.allclose(hess.reshape(12, 12), torch.eye(12, dtype=torch.float64) / 12)


def test_mse_rejects_mismatched_float_targets():
    with pytest.raises(ValueError, match="shape"):
        mse(torch.zeros(3, 4), torch.zeros(3, 5))


def test_cross_entropy_matches_numpy_for_labels_and_probabilities():
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([3, 0, 1, 1, 2, 3])
    logp = _numpy_logsoftmax(out.numpy())
    expected = -logp[np.arange(6), labels.numpy()].mean()
    assert cross_entropy(out, labels).item() == pytest.approx(expected, rel=1e-12)
    probs = np.full((6, 4), 0.1)
    probs[np.arange(6), labels.numpy()] = 0.7
    expected_soft = -(probs * logp).sum(axis=1).mean()
    assert cross_entropy(out, torch.from_numpy(probs)).item() == pytest.approx(expected_soft, rel=1e-12)


def test_cross_entropy_flattens_sequence_dimensions():
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(2, 3, 5, generator=gen)
    tok = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.allclose(cross_entropy(out, tok), cross_entropy(out.reshape(6, 5), tok.reshape(6)))


def test_accuracy_counts_argmax_matches():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(out, torch.tensor([1, 0, 0, 0])) == pytest.approx(0.75)
    assert accuracy(out, one_hot(torch.tensor([1, 1, 1, 1]), 2)) == pytest.approx(0.5)


def test_get_loss_by_name_and_unknown_name_lists_allowed():
    assert get_loss("mse") is mse and get_loss("cross_entropy") is cross_entropy
    with pytest.raises(ValueError, match="mse, cross_entropy"):
        get_loss("hinge")
    assert set(LOSSES) == {"mse", "cross_entropy"}


@pytest.mark.parametrize("one_sync", [False, True])
def test_accuracy_of_soft_targets_counts_their_own_argmax_as_the_class(one_sync):
    # mixup's soft targets: the class of a row is the arg-max of its target row. Rows 0 and 2
    # hit (outputs' arg-max 1 and 0 match), row 1 misses (2 vs 0): 2/3 by hand
    from catapult.losses import loss_and_accuracy

    outputs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]])
    targets = torch.tensor([[0.3, 0.6, 0.1], [0.7, 0.05, 0.25], [0.55, 0.4, 0.05]])
    assert accuracy(outputs, targets) == pytest.approx(2 / 3, abs=0)
    loss = torch.tensor(1.25)
    assert loss_and_accuracy(loss, outputs, targets, one_sync=one_sync) == (1.25, pytest.approx(2 / 3, abs=1e-15))


def test_integer_targets_must_match_the_output_rows():
    """Labels of shape (T, B) for outputs (B, T, K) were flattened and paired with the wrong rows:
    a loss and an accuracy of other labels, silently."""
    torch.manual_seed(0)
    outputs, labels = torch.randn(2, 3, 4), torch.randint(4, (2, 3))
    logp = torch.log_softmax(outputs, -1).numpy()
    ref = -np.mean([logp[b, t, labels[b, t]] for b in range(2) for t in range(3)])
    assert abs(float(cross_entropy(outputs, labels)) - ref) < 1e-6
    assert abs(float(cross_entropy(outputs, labels.reshape(-1))) - ref) < 1e-6   # flat: row order
    assert abs(float(cross_entropy(outputs.reshape(6, 4), labels)) - ref) < 1e-6
    for bad in (labels.T.contiguous(), labels.unsqueeze(-1)):
        with pytest.raises(ValueError, match=r"cross_entropy: integer targets of shape .* outputs of shape \(2, 3, 4\)"):
            cross_entropy(outputs, bad)
        with pytest.raises(ValueError, match=r"accuracy: integer targets of shape"):
            accuracy(outputs, bad)


def test_accuracy_soft_targets_must_match_the_outputs():
    """Soft targets of shape (3, 2, K) for outputs (2, 3, K) were flattened and paired with the
    wrong rows, silently (cross_entropy and mse refuse them)."""
    outputs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    soft = torch.nn.functional.one_hot(outputs.argmax(-1), 2).float()        # every row a hit
    assert accuracy(outputs, soft) == 1.0
    assert accuracy(outputs.reshape(6, 2), soft) == 1.0 and accuracy(outputs, soft.reshape(6, 2)) == 1.0
    with pytest.raises(ValueError, match=r"accuracy: float targets of shape \(3, 2, 2\)"):
        accuracy(outputs, soft.reshape(3, 2, 2))


def test_loss_and_accuracy_one_sync_checks_target_shapes():
    """The accelerator path of loss_and_accuracy (one_sync=True) counted hits of transposed labels."""
    from catapult.losses import loss_and_accuracy
    outputs, labels = torch.randn(2, 3, 4), torch.randint(4, (2, 3))
    loss = cross_entropy(outputs, labels)
    assert loss_and_accuracy(loss, outputs, labels, one_sync=True)[1] == accuracy(outputs, labels)
    with pytest.raises(ValueError, match=r"accuracy: integer targets of shape \(3, 2\)"):
        loss_and_accuracy(loss, outputs, labels.T.contiguous(), one_sync=True)
    soft = torch.nn.functional.one_hot(labels, 4).float()
    with pytest.raises(ValueError, match=r"accuracy: float targets of shape \(3, 2, 4\)"):
        loss_and_accuracy(loss, outputs, soft.transpose(0, 1).contiguous(), one_sync=True)


def test_cross_entropy_refuses_probabilities_of_transposed_rows():
    """Probabilities (3, 2, K) for outputs (2, 3, K) have the right count and would pair with the
    wrong rows after flattening (mutation pass 22b, LS4: without the shape check a number came back)."""
    outputs = torch.zeros(2, 3, 4)
    probs = torch.full((3, 2, 4), 0.25)
    assert cross_entropy(outputs, torch.full((2, 3, 4), 0.25)).item() == pytest.approx(np.log(4), rel=1e-6)
    with pytest.raises(ValueError, match=r"^cross_entropy: targets of shape \(3, 2, 4\) do not match outputs of shape "
                                         r"\(2, 3, 4\)"):
        cross_entropy(outputs, probs)


@pytest.mark.parametrize("one_sync", [False, True])
def test_the_accuracy_of_no_rows_is_nan(one_sync):
    """A mean over zero rows is undefined: accuracy and loss_and_accuracy (either path) say nan, not
    0.0 (mutation pass 22b, LS7 and LS12: 0.0, a run that scored nothing)."""
    from catapult.losses import loss_and_accuracy
    outputs, labels = torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)
    assert np.isnan(accuracy(outputs, labels)) and np.isnan(accuracy(outputs, torch.zeros(0, 3)))
    loss, acc = loss_and_accuracy(torch.tensor(1.5), outputs, labels, one_sync=one_sync)
    assert loss == 1.5 and np.isnan(acc)
