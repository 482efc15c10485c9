"""``losses.accuracy`` (amax + arg-max on candidate rows only, or the plain arg-max up to
``PLAIN_ARGMAX_ENTRIES`` logits) equals the full arg-max definition ``mean_i [argmax_k f_k(x_i) == y_i]``
exactly, ties, infinities and NaNs included, on both paths."""
import pytest
import torch

from catapult import losses
from catapult.losses import accuracy, argmax_hits

# each test below runs on the candidate-row path (every size) and on the size rule as shipped
both_paths = pytest.mark.parametrize("plain_up_to", [0, losses.PLAIN_ARGMAX_ENTRIES], ids=["candidates", "shipped"])


def reference_accuracy(outputs, labels):
    predicted = outputs.reshape(-1, outputs.shape[-1]).argmax(dim=-1)
    return (predicted == labels.reshape(-1)).double().mean().item()


@both_paths
def test_accuracy_equals_full_argmax_with_ties_infs_and_nans(plain_up_to, monkeypatch):
    monkeypatch.setattr(losses, "PLAIN_ARGMAX_ENTRIES", plain_up_to)
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


@both_paths
def test_first_maximum_wins_a_tie_and_nan_counts_as_the_maximum(plain_up_to, monkeypatch):
    monkeypatch.setattr(losses, "PLAIN_ARGMAX_ENTRIES", plain_up_to)
    nan = float("nan")
    logits = torch.tensor([[3., 3., 0.], [3., 3., 0.], [0., nan, 9.], [nan, nan, 1.], [1., 2., 2.]])
    # torch's argmax: 0, 0, 1, 0, 1
    assert argmax_hits(logits, torch.tensor([0, 1, 1, 0, 1])) == 4  # rows 0, 2, 3, 4
    assert argmax_hits(logits, torch.tensor([-100, 5, 2, 0, 1])) == 2  # out-of-range labels never hit


def test_token_logits_past_the_size_rule_take_the_candidate_rows_and_equal_the_full_argmax():
    # (tokens x vocab) logits above PLAIN_ARGMAX_ENTRIES, with ties and an ignore index
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(0, 3, (600, 65), generator=g).float()
    assert logits.numel() > losses.PLAIN_ARGMAX_ENTRIES
    labels = torch.randint(0, 65, (600,), generator=g)
    labels[::7] = -100
    reference = int((logits.argmax(dim=-1) == labels).sum())
    assert argmax_hits(logits, labels) == reference > 0


def reference_collapsed(outputs, rtol):
    out = torch.as_tensor(outputs).detach().double()
    out = out.reshape(out.shape[0], -1)
    if out.shape[0] < 2 or not bool(torch.isfinite(out).all()):
        return False
    return float(out.std(dim=0, unbiased=False).max()) <= rtol * float(out.abs().max())


def test_output_collapsed_fast_proof_agrees_with_the_float64_rule_at_the_border():
    from catapult.engine.step import COLLAPSE_RTOL, output_collapsed

    g = torch.Generator().manual_seed(1)
    seen = set()
    for dtype in (torch.float32, torch.float64, torch.float16):
        for scale in (0.0, 1e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 1e-3, 1.0):
            for n in (2, 3, 64):
                base = torch.randn(1, 5, generator=g, dtype=torch.float64) * 100
                out = (base + scale * 100 * torch.randn(n, 5, generator=g, dtype=torch.float64)).to(dtype)
                expected = reference_collapsed(out, COLLAPSE_RTOL)
                seen.add(expected)
                assert output_collapsed(out) == expected, (dtype, scale, n)
    assert seen == {True, False}
    assert not output_collapsed(torch.tensor([[float("nan"), 1.0], [float("nan"), 1.0]]))


def test_metrics_file_flushes_first_row_then_on_its_cadence_and_at_close(tmp_path):
    from catapult.engine.records import MetricsFile, read_metrics

    path = tmp_path / "metrics.csv"
    mf = MetricsFile(path, ("step", "lr"), flush_seconds=3600.0)
    mf.write({"step": 0, "lr": 0.5})
    mf.write({"step": 1, "lr": 0.25})
    assert [r["step"] for r in read_metrics(path)] == [0]  # a kill now keeps row 0
    mf.close()
    assert read_metrics(path) == [{"step": 0, "lr": 0.5}, {"step": 1, "lr": 0.25}]
    every = MetricsFile(tmp_path / "m2.csv", ("step",), flush_seconds=0.0)
    for t in range(3):
        every.write({"step": t})
        assert [r["step"] for r in read_metrics(tmp_path / "m2.csv")] == list(range(t + 1))
    every.close()


def test_loss_and_accuracy_one_sync_path_equals_two_reads():
    from catapult.losses import loss_and_accuracy

    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        logits = torch.randint(0, 3, (4, 9, 5), generator=g).to(dtype)
        labels = torch.randint(0, 5, (4, 9), generator=g)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1))
        two = (float(loss.item()), reference_accuracy(logits, labels))
        assert loss_and_accuracy(loss, logits, labels, one_sync=True) == two
        assert loss_and_accuracy(loss, logits, labels, one_sync=False) == two
