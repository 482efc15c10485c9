"""A model whose forward runs on the whole batch but not on a micro-batch (a state shaped by the
batch) under the config's micro-batches: the command line says so in a short message naming the
config key and the failing piece's sample count (``PieceFailed``'s text, which only direct callers
of ``reduction_kind`` saw), exit code 2, no run directory left; it was a ValueError's traceback
(exit 1). From Python the refusal is a ``MicroBatchRefused`` (a ValueError) holding the same text."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import catapult
from catapult import cli
from catapult.curvature.microbatch import MicroBatchRefused
from catapult.engine import MODELS
from tiny_run import tiny_config


class BatchShaped(nn.Module):
    """A linear model plus a state of one row per sample of the training batch (32)."""

    def __init__(self, in_features: int, out_features: int, rows: int = 32):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features)
        self.register_buffer("state", torch.zeros(rows, out_features))

    def forward(self, x):
        return self.lin(x.flatten(1)) + self.state


def test_the_command_names_the_key_and_the_failing_piece(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "mlp", lambda model, i, o: BatchShaped(i, o))
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config("tiny"))
    out = tmp_path / "run"
    code = cli.main(["train", str(config), "--out", str(out), "--progress", "none", "eval.sharpness_chunk_size=8",
                     "data.n_test=32", "eval.sharpness_every=1"])   # the test batch has 32 rows too
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "the forward of 8 samples failed" in err and "eval.sharpness_chunk_size: null" in err
    assert len(err) < 1000 and not out.exists()


@pytest.mark.parametrize("chunk", [8, 24])
def test_from_python_the_refusal_holds_the_piece_s_text(chunk):
    model = BatchShaped(3, 2).double()
    batch = (torch.randn(32, 3, dtype=torch.float64), torch.zeros(32, 2, dtype=torch.float64))
    with pytest.raises(MicroBatchRefused, match=rf"the forward of {chunk} samples failed: The size of tensor") as err:
        catapult.sharpness(model, nn.MSELoss(), batch, chunk_size=chunk)
    assert err.value.option == "chunk_size" and isinstance(err.value, ValueError)
