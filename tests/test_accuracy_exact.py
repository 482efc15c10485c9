"""``losses.accuracy`` (amax + arg-max on candidate rows only) equals the plain full arg-max
definition ``mean_i [argmax_k f_k(x_i) == y_i]`` exactly, ties, infinities and NaNs included."""
import torch

from catapult.losses import accuracy, argmax_hits


def reference_accuracy(outputs, labels):
    predicted = outputs.reshape(-1, outputs.shape[-1]).argmax(dim=-1)
    return (predicted == labels.reshape(-1)).double().mean().item()


def test_accuracy_equals_full_argmax_with_ties_infs_and_nans():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for trial in range(20):
            logits = torch.randint(0, 4, (257, 7), generator=g).to(dtype)  # many ties on purpose
            if trial % 3 == 1:
                logits[torch.rand(257, 7, generator=g) < 0.05] = float("nan")
            if trial % 3 == 2:
                logits[torch.rand(257, 7, generator=g) < 0.05] = float("inf")
                logits[torch.rand(257, 7, generator=g) < 0.05] = -float("inf")
            labels = torch.randint(0, 7, (257,), generator=g)
            assert accuracy(logits, labels) == reference_accuracy(logits, labels)
            assert accuracy(logits.reshape(1, 257, 7), labels.reshape(1, 257)) == reference_accuracy(logits, labels)


def test_first_maximum_wins_a_tie_and_nan_counts_as_the_maximum():
    nan = float("nan")
    logits = torch.tensor([[3., 3., 0.], [3., 3., 0.], [0., nan, 9.], [nan, nan, 1.], [1., 2., 2.]])
    # torch's argmax: 0, 0, 1, 0, 1
    assert argmax_hits(logits, torch.tensor([0, 1, 1, 0, 1])) == 4  # rows 0, 2, 3, 4
    assert argmax_hits(logits, torch.tensor([-100, 5, 2, 0, 1])) == 2  # out-of-range labels never hit
