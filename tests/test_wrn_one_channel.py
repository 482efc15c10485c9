"""WRN(channels=1): the LayerNorm after the stem normalises each pixel's one channel to 0, so
the network's output was its readout bias whatever the input (and every curvature its readout
bias' alone), silently. Refused, naming channels, by the model and the config."""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.models import WRN


def test_one_stem_channel_is_refused_and_two_see_the_input():
    with pytest.raises(ValueError, match=r"^WRN channels must be >= 2: with 1, each pixel's LayerNorm"):
        WRN(1, 3, depth=10, widen=2, channels=1)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"model": {"name": "wrn", "depth": 10, "widen": 1, "channels": 1}, "train": {"batch_size": 8}})
    assert err.value.keys == ["model.channels"] and "must be >= 2 for the wrn" in str(err.value)
    torch.manual_seed(0)
    net = WRN(1, 3, depth=10, widen=1, channels=2)
    with torch.no_grad():
        torch.nn.init.normal_(net.readout.bias)   # a nonzero bias: the constant the one-channel net returned
        a, b = net(torch.randn(2, 1, 4, 4)), net(torch.randn(2, 1, 4, 4))
    assert (a - b).abs().min() > 0 and (a[0] - a[1]).abs().min() > 0   # outputs differ per input
