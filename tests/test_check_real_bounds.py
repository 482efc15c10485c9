"""The ends of the ranges ``check_real`` holds at its call sites (mutation pass 13): each value just
past a documented end is refused with the one message naming owner, argument, range and value,
and what the function gave there before is in the comment; the end itself, where it is allowed,
gives the closed form the docstring states."""
from __future__ import annotations

import re

import pytest
import torch

from catapult import instability_threshold, schedules
from catapult.data.text import text_splits
from catapult.optim.thresholds import radam_threshold
from catapult.sparsity import MaskUpdater
from catapult.sparsity.dynamic import gmp_density, rigl_update
from test_check_real import _density, _text_file
from test_dynamic_sparsity_steps import _model

# (id, call with the value, value past the end, "owner label" and range the message names)
PAST_THE_END = [
    # lr_end -0.5 ran: linear_decay(1.0, 1.0, -0.5) is -0.5, a negative lr at the decay's end
    ("linear_decay.lr_end", lambda v: schedules.linear_decay(1.0, 1.0, v), -0.5, "linear_decay lr_end", " >= 0"),
    ("cosine_decay.lr_end", lambda v: schedules.cosine_decay(1.0, 1.0, v), -0.5, "cosine_decay lr_end", " >= 0"),
    # lr 0: ZeroDivisionError in Python's words (the threshold 2 (1 + b1) / ((1 - b1) lr))
    ("radam_threshold.lr", lambda v: radam_threshold(v, (0.9, 0.999), 1), 0.0, "radam_threshold lr", " > 0"),
    # initial_density 0: a layer with no weight at the start of pruning (a density of 0.0 back)
    ("gmp_density.initial_density", lambda v: gmp_density(0, 0.1, 0, 10, initial_density=v), 0.0,
     "gmp_density initial_density", " in (0, 1]"),
    # fraction 1.5: the active entries dropped and as many inactive ones, then all grown
    ("rigl_update.fraction", lambda v: rigl_update(torch.arange(4.0), torch.tensor([True, True, False, False]),
                                                   torch.ones(4), v), 1.5, "rigl_update fraction", " in [0, 1]"),
    # val_fraction 0 was refused by the split in other words ("... characters are too few to hold out
    # val_fraction=0.0"), which blame the text
    ("text_splits.val_fraction", lambda v: text_splits(_text_file(), val_fraction=v), 0.0, "load_text val_fraction",
     " in (0, 1)"),
    # sigma 0: a Gaussian of width 0 (the density's kernel divides by it)
    ("spectral_density.sigma", lambda v: _density(sigma=v), 0.0, "spectral_density sigma", " > 0"),
    # lr 0: the threshold 2 / lr divides by it
    ("instability_threshold.lr", lambda v: instability_threshold(torch.optim.SGD([torch.zeros(1)], lr=0.1), v), 0.0,
     "instability_threshold lr", " > 0"),
    # drop_fraction 0: RigL's masks never change (a schedule that changes no mask is refused)
    ("MaskUpdater.drop_fraction", lambda v: MaskUpdater(_model(0.5), "rigl", final_density=0.5, update_every=1,
                                                        end_step=10, drop_fraction=v), 0.0,
     "MaskUpdater drop_fraction", " in (0, 1]"),
]


@pytest.mark.parametrize("site, call, value, who, where", PAST_THE_END, ids=[s[0] for s in PAST_THE_END])
def test_a_value_past_the_documented_end_is_refused_naming_the_range(site, call, value, who, where):
    with pytest.raises(ValueError, match=f"^{re.escape(who)} must be a finite number{re.escape(where)}; got {value!r}$"):
        call(value)


def test_the_ends_themselves_give_the_closed_forms():
    # lr_end 0 is a decay to nothing: (1 - s) lr_start, (1 + cos(pi s)) / 2 lr_start
    assert schedules.linear_decay(0.25, 2.0, 0.0) == 1.5 and schedules.cosine_decay(0.5, 2.0, 0.0) == pytest.approx(1.0)
    # (2 + 2 b1) / ((1 - b1) lr) at b1 = 0: 2 / lr
    assert radam_threshold(0.5, (0.0, 0.999), 1) == ("hessian", 4.0)
    assert gmp_density(0, 0.1, 0, 10, initial_density=1.0) == 1.0
    # fraction 1: every active entry dropped, as many of the largest-gradient ones grown (the count kept)
    mask = rigl_update(torch.arange(4.0), torch.tensor([True, True, False, False]), torch.tensor([0.0, 0.0, 2.0, 1.0]), 1.0)
    assert mask.tolist() == [False, False, True, True]
