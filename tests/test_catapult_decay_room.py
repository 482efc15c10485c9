"""A catapult warmup with a decay is checked before lambda_0 and the step-0 critical-lr search, so
against the latest peak the search can give: the ramp ``lr_c + lr_trgt t / T`` first reaches lr_trgt
at ``ceil(T (1 - lr_c / lr_trgt))``, anywhere from step 0 to step T itself (when lr_c < lr_trgt / T),
one step after a linear warmup's T - 1. Before, ``train.steps: T + 1`` passed and such a run's
"cosine decay" reached no update (steps 0..T all warmup, the last one at the peak). Truth: the
peak step recomputed from the run's own lr_c and lr_trgt, and lr_final = lr_trgt / 10."""
from __future__ import annotations

import math

import pytest

from catapult import config as cfg
from catapult.engine import run

T = 8


def _config(warmup: str, steps: int) -> dict:
    # fig5_steps_saved's model (MLP 4 x 256, SP, no bias, MSE, full batch) on 256 digits, lr 2^5/lambda0:
    # its lr_c / lr_trgt (0.087) is below 1 / T, so the catapult peak is at step T
    return dict(seed=0, data=dict(name="digits", n_train=256, n_test=64),
                model=dict(name="mlp", width=256, depth=4, parametrization="sp", bias=False), loss="mse",
                optimizer=dict(name="sgd", lr="2^5/lambda0"),
                schedule=dict(warmup=warmup, warmup_steps=T, decay="cosine"),
                train=dict(steps=steps, batch_size=None), eval=dict(sharpness_every=0, test_every=0))


def test_a_catapult_decay_with_no_room_after_the_latest_peak_is_refused_before_any_work():
    with pytest.raises(cfg.ConfigError, match=r"schedule\.decay: cosine decay needs train\.steps \(9\) > "
                                              r"schedule\.warmup_steps \+ 1 \(9\) with schedule\.warmup: catapult"):
        cfg.validate(_config("catapult", T + 1))
    cfg.validate(_config("linear", T + 1))   # a linear warmup peaks at T - 1: step T decays
    # the shortest catapult run accepted decays its last update to lr_final
    result = run(_config("catapult", T + 2), progress="none")
    lr_c, lr_trgt = result.summary["lr_critical"], result.summary["lr_target"]
    peak = math.ceil(T * (1 - lr_c / lr_trgt))
    assert peak == T   # the latest peak the search can give
    lrs = [row["lr"] for row in result.metrics]
    assert lrs[T] == pytest.approx(lr_trgt, rel=1e-12, abs=0)              # the peak, then the last update:
    assert lrs[T + 1] == pytest.approx(lr_trgt / 10, rel=1e-12, abs=0)     # lr_final (default lr_trgt / 10)
    assert all(a < b for a, b in zip(lrs[:T], lrs[1:T + 1]))                # steps 0..T: the catapult ramp


@pytest.mark.parametrize("steps", [T, T + 1])
def test_a_catapult_warmup_with_no_decay_needs_no_step_after_its_peak(steps):
    # the room check is the decay's: with decay constant the lr stays at lr_trgt after the peak, and a
    # run that ends at (or before) the latest peak the search can give is a whole catapult warmup
    config = _config("catapult", steps)
    config["schedule"]["decay"] = "constant"
    assert cfg.validate(config)["schedule"]["decay"] == "constant"
