"""``catapult.arguments.check_real`` at the sites that checked their real numbers by hand (or not at
all): nan, +-inf, a bool, a string and a one-element list are refused everywhere with one ValueError
naming the owner, the argument and the value; a NumPy scalar and a 0-d tensor are the number they
hold. Each site's out-of-range values, and the silently wrong answers they gave, are checked
against the closed form the function documents."""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from catapult import schedules, sparsity
from catapult import critical_lr, instability_threshold, param_groups, spectral_density
from catapult.curvature.forward_ad import huber_from_definition
from catapult.data.text import text_splits
from catapult.engine import MetricsFile
from catapult.optim.thresholds import radam_rho, radam_threshold
from catapult.models.gpt import CausalSelfAttention, FeedForward
from catapult.models.wrn import ChannelLayerNorm
from catapult.scaled_layers import init_weight_
from catapult.sweep.batched_memory import func_member_bytes, memory_budget
from catapult.sweep.claims import LEASE_S, Heartbeat

def _critical_lr(**kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    return critical_lr(model, torch.nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs).lr


def _density(**kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    return spectral_density(model, torch.nn.MSELoss(), batch, runs=1, steps=2, grid_points=5, **kwargs).density.tolist()


def _text_file():
    path = Path(tempfile.mkdtemp()) / "t.txt"
    path.write_text("hello world, this is text. " * 40)
    return path


NOT_REALS = [float("nan"), float("inf"), -float("inf"), True, "0.5", [0.5]]

# (id, call with the value, "owner label" the message starts with)
SITES = [
    ("polynomial_warmup_factor.power", lambda v: schedules.polynomial_warmup_factor(1, 4, v),
     "polynomial_warmup_factor power"),
    ("cosine_decay.s", lambda v: schedules.cosine_decay(v, 1.0, 0.1), "cosine_decay s"),
    ("cosine_decay.lr_end", lambda v: schedules.cosine_decay(0.5, 1.0, v), "cosine_decay lr_end"),
    ("linear_decay.s", lambda v: schedules.linear_decay(v, 1.0, 0.1), "linear_decay s"),
    ("warmup.lr_target", lambda v: schedules.warmup(v, 4), "WarmupSchedule lr_target"),
    ("warmup.power", lambda v: schedules.warmup(1.0, 4, power=v), "WarmupSchedule power"),
    ("catapult_warmup.lr_critical", lambda v: schedules.catapult_warmup(1.0, 4, v), "CatapultWarmupSchedule lr_critical"),
    ("exact_nonzeros.density", lambda v: sparsity.exact_nonzeros(100, v), "exact_nonzeros density"),
    ("random_mask.density", lambda v: sparsity.random_mask((10, 10), v), "random_mask density"),
    ("MaskedLinear.density", lambda v: sparsity.MaskedLinear(10, 10, density=v), "MaskedLinear density"),
    ("sparsify_.density", lambda v: sparsity.sparsify_(torch.nn.Linear(10, 10), v), "sparsify_ density"),
    ("rigl_drop_fraction.alpha", lambda v: sparsity.rigl_drop_fraction(1, v, 10), "rigl_drop_fraction alpha"),
    ("gmp_density.final_density", lambda v: sparsity.gmp_density(5, v, 0, 10), "gmp_density final_density"),
    ("gmp_density.initial_density", lambda v: sparsity.gmp_density(5, 0.5, 0, 10, initial_density=v),
     "gmp_density initial_density"),
    ("ChannelLayerNorm.eps", lambda v: ChannelLayerNorm(3, eps=v), "ChannelLayerNorm eps"),
    ("init_weight_.var", lambda v: init_weight_(torch.empty(4, 4), v), "init_weight_ var"),
    ("memory_budget.fraction", lambda v: memory_budget("cpu", v, total_ram=1000), "memory_budget fraction"),
    ("func_member_bytes.hvp_fraction", lambda v: func_member_bytes(
        n_params=10, buffer_bytes=0, activations=10, itemsize=4, rule="sgd", sharpness=True, hvp_fraction=v),
     "func_member_bytes hvp_fraction"),
    ("Heartbeat.interval", lambda v: Heartbeat(os.path.join(tempfile.mkdtemp(), "s.db"), "d", v).stop(),
     "Heartbeat interval"),
    ("MetricsFile.flush_seconds", lambda v: MetricsFile(Path(tempfile.mkdtemp()) / "m.csv", flush_seconds=v).close(),
     "MetricsFile flush_seconds"),
    ("critical_lr.lr_start", lambda v: _critical_lr(lr_start=v), "critical_lr lr_start"),
    ("critical_lr.rtol", lambda v: _critical_lr(rtol=v), "critical_lr rtol"),
    ("text_splits.val_fraction", lambda v: text_splits(_text_file(), val_fraction=v), "load_text val_fraction"),
    ("radam_rho.beta2", lambda v: radam_rho(5, v), "radam_rho beta2"),
    ("radam_threshold.betas[0]", lambda v: radam_threshold(0.1, (v, 0.999), 5), "radam_threshold betas[0]"),
    ("radam_threshold.betas[1]", lambda v: radam_threshold(0.1, (0.9, v), 5), "radam_threshold betas[1]"),
    ("spectral_density.sigma", lambda v: _density(sigma=v), "spectral_density sigma"),
    ("param_groups.lr", lambda v: param_groups(torch.nn.Linear(2, 2), v), "param_groups lr"),
    ("instability_threshold.lr", lambda v: instability_threshold(torch.optim.SGD([torch.zeros(1)], lr=0.1), v),
     "instability_threshold lr"),
    ("FeedForward.dropout", lambda v: FeedForward(4, activation="gelu", bias=True, dropout=v), "FeedForward dropout"),
    ("CausalSelfAttention.dropout", lambda v: CausalSelfAttention(4, 2, scale=0.5, bias=True, dropout=v),
     "CausalSelfAttention dropout"),
    ("CausalSelfAttention.scale", lambda v: CausalSelfAttention(4, 2, scale=v, bias=True, dropout=0.0),
     "CausalSelfAttention scale"),
    ("param_groups.weight_decay", lambda v: param_groups(torch.nn.Linear(2, 2), 0.1, weight_decay=v),
     "param_groups weight_decay"),
]


@pytest.mark.parametrize("value", NOT_REALS, ids=repr)
@pytest.mark.parametrize("site, call, who", SITES, ids=[s[0] for s in SITES])
def test_what_is_no_finite_real_is_refused_naming_owner_argument_and_value(site, call, who, value):
    with pytest.raises(ValueError, match=f"^{re.escape(who)} must be a finite number") as err:
        call(value)
    assert str(err.value).endswith(f"; got {value!r}")


# sites whose arithmetic (float(), *, **) took a NumPy scalar and a 0-d tensor already
TOOK_0D = {"cosine_decay.lr_end", "exact_nonzeros.density", "random_mask.density", "MaskedLinear.density",
           "sparsify_.density", "gmp_density.final_density", "gmp_density.initial_density", "ChannelLayerNorm.eps",
           "init_weight_.var", "memory_budget.fraction", "func_member_bytes.hvp_fraction",
           "Heartbeat.interval", "MetricsFile.flush_seconds", "critical_lr.rtol", "radam_threshold.betas[0]", "radam_threshold.betas[1]",
           "spectral_density.sigma", "param_groups.lr", "param_groups.weight_decay",
           "instability_threshold.lr", "FeedForward.dropout", "CausalSelfAttention.dropout",
           "CausalSelfAttention.scale"}
REFUSED_0D = [s for s in SITES if s[0] not in TOOK_0D]


@pytest.mark.parametrize("site, call, who", REFUSED_0D, ids=[s[0] for s in REFUSED_0D])
def test_a_numpy_scalar_and_a_0d_tensor_are_the_number_they_hold(site, call, who):
    # warmup(torch.tensor(0.5), 4) was a TypeError, random_mask(..., np.float32) ran, ...: now all alike
    def plain(out):
        return out.tolist() if isinstance(out, torch.Tensor) else out.weight.count_nonzero().item() \
            if isinstance(out, torch.nn.Module) else out

    torch.manual_seed(0)
    expected = plain(call(0.5))
    for value in (np.float64(0.5), np.float32(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)):
        torch.manual_seed(0)
        assert plain(call(value)) == expected


def test_polynomial_warmup_factor_refuses_powers_that_gave_the_target_at_once():
    # ((t + 1) / T) ** p: power nan gave 1.0 (min(1, nan)), 0 and -1 gave 1.0 at every step, inf gave 0.0
    # and True ran as power 1
    for power in (float("nan"), 0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="^polynomial_warmup_factor power must be a finite number > 0; got "):
            schedules.polynomial_warmup_factor(1, 4, power)
    assert schedules.polynomial_warmup_factor(1, 4, np.float32(2.0)) == (2 / 4) ** 2
    with pytest.raises(ValueError, match="^polynomial_warmup_factor warmup_steps must be an integer in \\[1, 1000000000\\]; got 0$"):
        schedules.polynomial_warmup_factor(1, 0)     # ZeroDivisionError


@pytest.mark.parametrize("decay", [schedules.cosine_decay, schedules.linear_decay])
def test_decays_refuse_progress_outside_0_1_that_left_the_lr_range(decay):
    # cosine_decay(-0.5, 1, 0.1) was 0.55 (cos is even), linear_decay(1.5, 1, 0.1) -0.35: an lr below 0
    for s in (-0.5, 1.5):
        with pytest.raises(ValueError, match=rf"^{decay.__name__} s must be a finite number in \[0, 1\]; got {s}$"):
            decay(s, 1.0, 0.1)
    assert decay(0.0, 1.0, 0.1) == 1.0 and decay(1.0, 1.0, 0.1) == 0.1


def test_schedule_lrs_take_a_0d_tensor_and_refuse_a_bool_with_one_error_type():
    # TypeError ("must be a real number") for True and for a 0-d tensor; ValueError for nan
    assert schedules.warmup(torch.tensor(2.0), 2)(1) == 2.0
    with pytest.raises(ValueError, match="^WarmupSchedule lr_target must be a finite number >= 0; got True$"):
        schedules.warmup(True, 2)


def test_sparsity_densities_refuse_true_that_ran_as_a_dense_layer():
    # exact_nonzeros(100, True) was 100 of 100 kept, sparsify_(layer, True) a dense "sparse" layer,
    # exact_nonzeros(100, "0.1") was 10, MaskedLinear(density=True) an AttributeError from torch
    with pytest.raises(ValueError, match=r"^exact_nonzeros density must be a finite number in \(0, 1\]; got True$"):
        sparsity.exact_nonzeros(100, True)
    layer = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="^sparsify_ density must be a finite number"):
        sparsity.sparsify_(layer, True)
    assert type(layer) is torch.nn.Linear and not hasattr(layer, "mask")  # refused before it changed class
    assert sparsity.exact_nonzeros(100, torch.tensor(0.25)) == 25
    mask = sparsity.random_mask((10, 10), np.float32(0.3), generator=torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 30


def test_gmp_density_and_rigl_drop_fraction_refuse_what_they_returned_silently():
    # gmp_density(5, nan, 0, 10) was nan, (5, 1.5, ...) 1.4375 (above dense), (5, -0.1, ...) 0.0375;
    # rigl_drop_fraction(1, -0.3, 10) a negative fraction, (1, nan, 10) nan
    for value in (float("nan"), 1.5, -0.1, 0.0):
        with pytest.raises(ValueError, match=r"^gmp_density final_density must be a finite number in \(0, 1\]"):
            sparsity.gmp_density(5, value, 0, 10)
    for value in (float("nan"), -0.3, 1.5):
        with pytest.raises(ValueError, match=r"^rigl_drop_fraction alpha must be a finite number in \[0, 1\]"):
            sparsity.rigl_drop_fraction(1, value, 10)
    # the closed forms: d_f + (d_0 - d_f)(1 - 1/2)^3 and (alpha / 2)(1 + cos(pi / 10))
    assert sparsity.gmp_density(5, np.float64(0.1), 0, 10) == pytest.approx(0.1 + 0.9 / 8)
    assert sparsity.rigl_drop_fraction(1, torch.tensor(0.3, dtype=torch.float64), 10) == pytest.approx(
        0.15 * (1 + math.cos(math.pi / 10)))


def test_layer_norm_eps_and_init_variance_refuse_what_gave_nan_weights_or_outputs():
    # ChannelLayerNorm(3, eps=nan) gave an all-nan output, (2.5) 2 channels; init_weight_(w, inf) an all-nan
    # weight and (w, True) variance 1
    x = torch.arange(24.0).reshape(1, 3, 2, 4)
    with pytest.raises(ValueError, match="^ChannelLayerNorm eps must be a finite number >= 0; got nan$"):
        ChannelLayerNorm(3, eps=float("nan"))
    with pytest.raises(ValueError, match="^ChannelLayerNorm channels must be an integer >= 1; got 2.5$"):
        ChannelLayerNorm(2.5)
    y = ChannelLayerNorm(3, eps=np.float32(0.0))(x)[0, :, 0, 0]        # (0, 8, 16) standardised: +-sqrt(3/2)
    assert torch.allclose(y, torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5))
    for var in (float("inf"), True, -1.0):
        with pytest.raises(ValueError, match="^init_weight_ var must be a finite number >= 0; got "):
            init_weight_(torch.empty(4), var)


def test_memory_plans_refuse_fractions_that_planned_the_wrong_amount():
    # memory_budget(fraction=True) planned 100% of the RAM; hvp_fraction=nan counted as 1, -1 subtracted the
    # HVP's activations: bytes = itemsize * (n_params * (3 + 2 * state) + 2 * activations) + s_h * (...)
    assert memory_budget("cpu", torch.tensor(0.5), total_ram=1000) == 500
    with pytest.raises(ValueError, match=r"^memory_budget fraction must be a finite number in \(0, 1\]; got True$"):
        memory_budget("cpu", True, total_ram=1000)
    for share in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="^func_member_bytes hvp_fraction must be a finite number > 0"):
            func_member_bytes(n_params=10, buffer_bytes=0, activations=10, itemsize=4, rule="sgd", sharpness=True,
                              hvp_fraction=share)
    assert func_member_bytes(n_params=10, buffer_bytes=0, activations=10, itemsize=4, rule="sgd", sharpness=True,
                             hvp_fraction=np.float32(0.5)) == 4 * (10 * 5 + 20) + 4 * (10 * 27 + 15)


def test_heartbeat_refuses_an_interval_that_lets_the_lease_lapse(tmp_path):
    # Heartbeat(interval=LEASE_S) beat once a lease: the driver read as dead between beats and its claims were
    # taken; interval="5" killed the thread at its first wait, silently
    for interval in (LEASE_S, "5", 0.0):
        with pytest.raises(ValueError, match=rf"^Heartbeat interval must be a finite number in \(0, {LEASE_S / 2:g}\]"):
            Heartbeat(tmp_path / "s.db", "d", interval)
    beat = Heartbeat(tmp_path / "s.db", "d", np.float64(LEASE_S / 2))
    beat.stop()
    assert beat.interval == LEASE_S / 2 and type(beat.interval) is float


def test_metrics_file_refuses_a_cadence_that_never_flushed_before_creating_the_file(tmp_path):
    # flush_seconds=nan: now - last >= nan is never true, so no row reached the file until close()
    with pytest.raises(ValueError, match="^MetricsFile flush_seconds must be a finite number >= 0; got nan$"):
        MetricsFile(tmp_path / "m.csv", flush_seconds=float("nan"))
    assert not (tmp_path / "m.csv").exists()


def test_radam_threshold_refuses_a_beta1_that_gave_a_nan_or_zero_threshold():
    # (2 + 2 b1) / ((1 - b1) lr): b1=nan gave nan, b1=-1 gave 0 (every sharpness "above" it), b1=1 and True
    # ZeroDivisionError; betas=(0.9, "0.1") ran as beta2 = 0.1
    for b1 in (float("nan"), -1.0, 1.0, True):
        with pytest.raises(ValueError, match=r"^radam_threshold betas\[0\] must be a finite number in \[0, 1\); got "):
            radam_threshold(0.1, (b1, 0.999), 1)
    with pytest.raises(ValueError, match=r"^radam_threshold betas\[1\] must be a finite number in \[0, 1\); got '0.1'$"):
        radam_threshold(0.1, (0.9, "0.1"), 1)
    kind, value = radam_threshold(torch.tensor(0.1, dtype=torch.float64), (np.float32(0.5), 0.999), 1)
    assert kind == "hessian" and value == pytest.approx((2 + 2 * 0.5) / ((1 - 0.5) * 0.1))


def test_bools_and_strings_that_were_type_errors_are_value_errors_now():
    # critical_lr(lr_start=True), param_groups(lr="0.1"): TypeError; a 0-d tensor val_fraction and a NumPy
    # beta2 of radam_rho were refused or taken by the same rule as everywhere else
    with pytest.raises(ValueError, match="^critical_lr lr_start must be a finite number > 0; got True$"):
        _critical_lr(lr_start=True)
    with pytest.raises(ValueError, match="^param_groups lr must be a finite number >= 0; got '0.1'$"):
        param_groups(torch.nn.Linear(2, 2), "0.1")
    train, val = text_splits(_text_file(), val_fraction=torch.tensor(0.25))[1:3]
    assert len(val) == pytest.approx(len(train + val) / 4, abs=1)


def test_huber_from_definition_refuses_the_deltas_torch_refuses():
    # under forward-mode AD the Huber loss is rebuilt from its definition: delta=-1 gave a negative loss and
    # delta=nan a nan one (and their curvature), where F.huber_loss raises; delta=inf is the halved square in both
    a, b = torch.tensor([0.5, -3.0]), torch.zeros(2)
    for delta in (-1.0, 0.0, float("nan")):
        with pytest.raises(RuntimeError, match="huber_loss does not support non-positive values for delta"):
            torch.nn.functional.huber_loss(a, b, delta=delta)
        with pytest.raises(RuntimeError, match="huber_loss does not support non-positive values for delta"):
            huber_from_definition(a, b, delta=delta)
    assert torch.equal(huber_from_definition(a, b, delta=math.inf), torch.nn.functional.huber_loss(a, b, delta=math.inf))


def test_gpt_blocks_built_alone_refuse_a_dropout_that_zeroed_every_output():
    # FeedForward(dropout=True) was nn.Dropout(p=1): in training every output 0; CausalSelfAttention(scale=nan)
    # gave nan attention; GPT checked its own dropout in [0, 1) already
    for p in (True, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"^FeedForward dropout must be a finite number in \[0, 1\); got "):
            FeedForward(4, activation="gelu", bias=True, dropout=p)
    with pytest.raises(ValueError, match="^CausalSelfAttention scale must be a finite number > 0; got nan$"):
        CausalSelfAttention(4, 2, scale=float("nan"), bias=True, dropout=0.0)
    block = FeedForward(4, activation="gelu", bias=True, dropout=np.float32(0.25))
    assert block.dropout.p == 0.25 and type(block.dropout.p) is float
