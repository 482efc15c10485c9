"""The figure legend's threshold (:func:`catapult.engine.records.threshold_label`) against the rule
the engine's rows actually use (:func:`catapult.engine.sharpness_rule.threshold`): RAdam's legend
said ``- wd`` after ``then / r_t`` (its rectified threshold has no shift: the pre-conditioned
operator holds the coupled L2), and Adam's coupled L2 beside the Hessian's kind was drawn as
``- wd`` though its threshold is not lowered. Truth: the closed forms ``38 / lr - wd`` (RAdam
un-rectified), ``38 / (r_t lr)`` (rectified; ``r_t`` written out in NumPy), ``38 / lr`` (Adam)."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.config import validate
from catapult.engine.records import RADAM_KIND, RADAM_LR_SCALED_KIND, threshold_label
from catapult.engine.sharpness_rule import threshold

LR, WD = 0.01, 0.5


def _r(t: int, b2: float) -> float:
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def test_radams_legend_lowers_only_the_unrectified_threshold_by_wd():
    w = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.RAdam(w, lr=LR, betas=(0.9, 0.999), weight_decay=WD)
    assert threshold(opt, step=0) == pytest.approx(38 / LR - WD)          # un-rectified: - wd
    assert threshold(opt, step=9) == pytest.approx(38 / (_r(10, 0.999) * LR))   # rectified: no shift
    config = validate({"optimizer": {"name": "radam", "weight_decay": WD}})
    label = threshold_label(config, RADAM_KIND)
    unrectified, rectified = label.split(" until rectified, then ")
    assert unrectified == "RAdam: (2+2b1)/((1-b1) lr_t) - wd (Hessian)"
    assert rectified == "(2+2b1)/((1-b1) r_t lr_t) (pre-conditioned) (wd = 0.5)"
    scaled = threshold_label(config, RADAM_LR_SCALED_KIND)
    assert scaled.startswith("RAdam: (2+2b1)/((1-b1) lr_t) - wd (lr-scaled, the first group's lr_t) until rectified")
    hessian = threshold_label(config, "hessian")      # eval.sharpness_kind: hessian: the same switch
    assert hessian == "RAdam: (2+2b1)/((1-b1) lr_t) - wd until rectified, then (2+2b1)/((1-b1) r_t lr_t) (wd = 0.5)"
    assert "- wd" not in threshold_label(validate({"optimizer": {"name": "radam"}}), RADAM_KIND)


def test_adams_coupled_l2_does_not_lower_the_drawn_threshold_beside_the_hessian():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert threshold(torch.optim.Adam(w, lr=LR, weight_decay=WD)) == pytest.approx(38 / LR)
    label = threshold_label(validate({"optimizer": {"name": "adam", "weight_decay": WD}}), "hessian")
    assert "wd" not in label
    # AdamW's decoupled decay lowers it, whatever the kind: (1 + b1) / (1 - b1) wd = 19 wd
    assert threshold(torch.optim.AdamW(w, lr=LR, weight_decay=WD)) == pytest.approx(38 / LR - 19 * WD)
    assert threshold_label(validate({"optimizer": {"name": "adamw", "weight_decay": WD}}), "hessian").endswith(
        " - 19 wd (wd = 0.5)")
