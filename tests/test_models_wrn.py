"""catapult.models.WRN: shapes, the init/multiplier table, per-layer lrs, config entry, sharpness
against the exact dense Hessian (float64), and the batched engine against local runs.

Independent truth: variances and fans from the formulas in the docstring re-derived here,
``torch.autograd.functional.hessian`` for the exact Hessian, and each sweep cell run alone by the
local engine.
"""
from __future__ import annotations

import math

import pytest
import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.curvature import preconditioned_sharpness, sharpness
from catapult.critical_lr import critical_lr
from catapult.losses import cross_entropy, mse
from catapult.models import WRN
from catapult.parametrize import param_groups
from catapult.sweep.batched import run_group
from catapult.sweep.executors import Cell
from rounding import assert_within_rounding, both_sides

pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(parametrization="sp", channels=2, **kw):
    torch.manual_seed(0)
    return WRN(1, 3, depth=10, widen=1, channels=channels, parametrization=parametrization, **kw)


def test_shapes_any_input_size_flat_or_images():
    torch.manual_seed(0)
    net = WRN(3, 10, depth=10, widen=1, channels=4)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert net(torch.randn(2, 3, 12, 12)).shape == (2, 10)
    digits = WRN(1, 10, depth=10, widen=1, channels=4)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(digits(x), digits(x.flatten(1)))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WRN(1, 10, depth=12)
    with pytest.raises(ValueError, match="square images"):
        digits(torch.randn(2, 60))
    # images of no pixels (or 0 flat features) gave torch's "Kernel size can't be greater than actual input size"
    assert digits(torch.randn(2, 1, 1, 1)).shape == (2, 10)
    for empty in (torch.randn(2, 1, 0, 0), torch.randn(2, 1, 8, 0), torch.randn(2, 0)):
        with pytest.raises(ValueError, match=r"H, W >= 1; got shape \(2, 1, "):
            digits(empty)


def test_layer_count_and_widths_of_wrn_16_4():
    torch.manual_seed(0)
    net = WRN(3, 10, depth=16, widen=4)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # stem + 3 groups x 2 blocks x 2 convs + 3 projection shortcuts (16->64, 64->128, 128->256)
    assert len(convs) == 1 + 12 + 3
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [64, 128, 256]
    assert net.readout.in_features == 256
    assert [m.catapult_role for m in convs].count("input") == 3   # stem, block 1's conv1 and shortcut


@pytest.mark.parametrize("init", ["normal", "trunc_normal"])
def test_init_variances_and_multipliers_follow_the_table(init):
    torch.manual_seed(0)
    sp = WRN(3, 10, depth=10, widen=4, parametrization="sp", init=init)
    torch.manual_seed(0)
    mup = WRN(3, 10, depth=10, widen=4, parametrization="mup", init=init)
    hidden_sp, hidden_mup = sp.blocks[1].conv2, mup.blocks[1].conv2      # 128 -> 128, 3x3
    n_in = n_out = 128 * 9
    assert hidden_sp.weight.var().item() == pytest.approx(2 / n_in, rel=0.03)
    assert hidden_mup.multiplier == pytest.approx(math.sqrt(n_out / n_in))
    stem = mup.stem                                                        # 3 -> 16
    assert stem.multiplier == pytest.approx(math.sqrt(16 * 9 / (3 * 9)))
    effective = (stem.multiplier * stem.weight).var().item()             # = SP's 2 / n_in
    assert effective == pytest.approx(2 / 27, rel=0.25)
    assert mup.readout.multiplier == pytest.approx(1 / math.sqrt(256))
    assert sp.readout.multiplier == 1.0 and sp.readout.weight.var().item() == pytest.approx(1 / 256, rel=0.1)
    if init == "trunc_normal":
        s = math.sqrt(2 / n_in) / 0.87962566103423978
        assert hidden_sp.weight.abs().max().item() <= 2 * s + 1e-7


def test_learning_rate_groups_paper_form_global_and_table_form_per_layer():
    torch.manual_seed(0)
    paper = WRN(1, 10, depth=10, widen=2, parametrization="mup")
    assert {g["lr_mult"] for g in param_groups(paper, 0.1, "sgd")} == {1.0}
    table = WRN(1, 10, depth=10, widen=4, parametrization="mup", base_widen=1)
    adam = {g["name"]: g["lr_mult"] for g in param_groups(table, 0.1, "adam")}
    assert adam["hidden"] == 0.25 and adam["input"] == 1.0 and adam["output"] == 1.0
    sgd = {g["name"]: g["lr_mult"] for g in param_groups(table, 0.1, "sgd")}
    # the stem conv and its LayerNorm (16 channels at every widen) keep lr: microsoft/mup's finite-shape rule
    assert sgd == {"fixed": 1.0, "input": 4.0, "vector": 4.0, "hidden": 1.0, "output": 4.0, "output_bias": 1.0}
    assert table.readout.multiplier == 0.25
    assert table.readout.weight.var().item() == pytest.approx(4 / 256, rel=0.15)   # 1 / n_in_base


def test_config_entry_and_its_errors():
    config = cfg.validate({"model": {"name": "wrn", "depth": 10, "widen": 1}, "train": {"batch_size": 32}})
    data = train.load_data(config)
    net = train.build_model(config, data.in_features, data.num_classes)
    assert isinstance(net, WRN) and net.in_channels == 1
    bad = [({"model": {"name": "wrn", "depth": 12}}, "model.depth"),
           ({"model": {"name": "wrn", "depth": 16, "width": 64}}, "model.width"),
           ({"model": {"name": "wrn", "depth": 16, "density": 0.5}}, "model.density"),
           ({"model": {"name": "mlp", "widen": 2}}, "model.widen")]
    for config, key in bad:
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate(config)
        assert key in str(err.value)


def test_model_channels_sets_the_base_channels_and_is_wrn_only(capsys, tmp_path):
    # model.channels = c: stem c, groups c k, 2 c k, 4 c k; the parameter count of WRN-10-k
    # written out: stem conv + LN, per group a block of two 3x3 convs (+ LN each) and a 1x1
    # projection (+ LN), readout with bias
    config = cfg.validate({"model": {"name": "wrn", "depth": 10, "widen": 2, "channels": 3},
                           "train": {"batch_size": 32}})
    assert config["model"]["channels"] == 3
    net = train.build_model(config, 64, 10)
    c, k = 3, 2
    assert net.stem.out_channels == c and net.readout.in_features == 4 * c * k
    widths, count, prev = [c * k, 2 * c * k, 4 * c * k], 9 * c + 2 * c, c
    for w in widths:
        count += 9 * prev * w + 9 * w * w + 4 * w + prev * w + 2 * w
        prev = w
    count += prev * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == count
    default = train.build_model(cfg.validate({"model": {"name": "wrn", "depth": 10, "widen": 2},
                                              "train": {"batch_size": 32}}), 64, 10)
    assert default.stem.out_channels == 16                      # the paper's WRN
    for model, words in [({"name": "mlp", "channels": 8}, "is a wrn option"),
                         ({"name": "wrn", "depth": 10, "channels": 0}, ">= 1"),
                         ({"name": "wrn", "depth": 10, "channels": 2.5}, "integer")]:
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate({"model": model, "train": {"batch_size": 32}})
        assert err.value.keys == ["model.channels"] and words in str(err.value)
    from catapult.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text("data: {name: digits, n_train: 32, n_test: 8}\ntrain: {steps: 1}\n")
    assert main(["train", str(path), "model.channels=8", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.channels" in err and "wrn option" in err and not (tmp_path / "run").exists()


def test_sharpness_equals_the_top_eigenvalue_of_the_exact_hessian_float64():
    net = _tiny("mup").double()      # 1321 parameters (channels=1 was a constant network: its LayerNorm)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    params = dict(net.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().flatten() for p in params.values()])

    def loss_of(flat):
        out, i = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            out[name] = flat[i:i + n].view(shape)
            i += n
        return cross_entropy(torch.func.functional_call(net, out, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat0)
    top = torch.linalg.eigvalsh(dense)[-1].item()
    est = sharpness(net, cross_entropy, (x, y), tol=1e-10, max_iter=400, max_basis=60)
    assert est.value == pytest.approx(top, rel=1e-7)


def test_preconditioned_sharpness_and_critical_lr_run_on_a_wrn():
    net = _tiny("sp").double()
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 3
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    pre = preconditioned_sharpness(net, mse, (x, y), opt, tol=1e-6, max_iter=200)
    assert math.isfinite(pre.value) and pre.value > 0
    before = [p.detach().clone() for p in net.parameters()]
    res = critical_lr(net, mse, (x, y), torch.optim.SGD(net.parameters(), lr=0.1), lr_start=1e-3, lr_max=1e3)
    assert 1e-3 <= res.lr <= 1e3 and res.lower <= res.upper
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))   # forward passes only


WRN_CELL = {"data": {"name": "digits", "n_train": 48, "n_test": 16,
                     "augment": {"flip": True, "crop": 1, "mixup": 0.5}},
            "model": {"name": "wrn", "depth": 10, "widen": 1, "parametrization": "mup", "init": "trunc_normal"},
            "dtype": "float64", "loss": "cross_entropy",
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "train": {"steps": 3, "batch_size": 16},
            # lambda_0 over 2 batches (the augmented batch 0, an unaugmented batch 1), not 10: the rows
            # compared are the same numbers (the step-0 sharpness is batch 0's either way)
            "eval": {"sharpness_every": 2, "test_every": 2, "sharpness_max_iter": 8, "lambda0_batches": 2}}


def test_batched_members_equal_their_local_runs_with_augmentation():
    cells = [Cell(i, cfg.validate({**WRN_CELL, "name": f"c{i}", "optimizer": {**WRN_CELL["optimizer"], "lr": lr}}))
             for i, lr in enumerate([0.05, 0.2])]
    batched = dict(run_group(cells))
    for cell in cells:
        local = train.run(cell.config, out_dir=None)
        res = batched[cell.id]
        assert res.status == local.status
        assert res.summary["lambda_0"] == pytest.approx(local.summary["lambda_0"], rel=1e-9)
        # zip stopped at the shorter list: a batched member that lost rows (or had none) compared fewer or none
        assert len(res.metrics) == len(local.metrics) == 4   # steps 0..3
        for a, b in zip(local.metrics, res.metrics):
            for key in ("train_loss", "train_accuracy", "sharpness", "test_loss"):
                if a[key] is None:
                    assert b[key] is None
                else:
                    assert b[key] == pytest.approx(a[key], rel=1e-9), (a["step"], key)


def test_parametrize_gives_a_users_convs_roles_and_conv_fan_in():
    from catapult.parametrize import infer_roles, parametrize
    from catapult.scaled_layers import ScaledConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 10))
    assert infer_roles(net) == {"0": "input", "2": "hidden", "5": "output"}
    parametrize(net, "mup", base_width=16, mask_seed=0)            # m_d = 64 / 16 = 4
    assert isinstance(net[2], ScaledConv2d) and net[2].catapult_role == "hidden"
    assert net[2].weight.var().item() == pytest.approx(1 / (64 * 9), rel=0.05)   # gain^2 / (C_in k^2)
    assert net[0].weight.var().item() == pytest.approx(1 / 27, rel=0.15)
    assert net[5].multiplier == 0.25
    x = torch.randn(2, 3, 8, 8)
    assert net(x).shape == (2, 10)
    with pytest.raises(ValueError, match="sparsity masks are for Linear"):
        parametrize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3), torch.nn.Flatten(),
                                        torch.nn.Linear(4, 2)), "supar", density=0.5, mask_seed=0)


def test_grouped_conv_fan_in_counts_one_group_and_parametrize_uses_it():
    """A grouped (e.g. depthwise) conv sums in_channels / groups * k^2 inputs into one output --
    the size of one filter, weight[0] -- so its hidden init variance is gain^2 / that."""
    from catapult.parametrize import parametrize
    from catapult.scaled_layers import fan_in, fan_out

    for conv in (torch.nn.Conv2d(16, 32, 3, groups=4), torch.nn.Conv2d(64, 64, (3, 5), groups=64)):
        assert fan_in(conv) == conv.weight[0].numel() == conv.in_channels // conv.groups * conv.weight[0, 0].numel()
        # one input channel reaches the out_channels / groups filters of its group, k^2 taps each
        assert fan_out(conv) == conv.out_channels // conv.groups * conv.weight[0, 0].numel()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, groups=8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 10))
    parametrize(net, "mup", base_width=16, mask_seed=0)
    assert net[2].catapult_role == "hidden"
    assert net[2].weight.var().item() == pytest.approx(1 / (8 * 9), rel=0.1)   # 64 / 8 inputs, 3x3


def test_no_conv_is_a_strided_1x1_and_the_shortcut_is_the_strided_conv_it_replaces():
    # A block's input is a LayerNorm's output with channels-last strides; torch 2.13's CPU 1x1
    # stride-2 convolution backward on such an input, at one thread, corrupted the heap. The
    # shortcut subsamples, then runs a stride-1 conv: the same map, checked against F.conv2d.
    torch.manual_seed(0)
    model = WRN(3, 4, depth=10, widen=1, channels=2)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not [c for c in convs if c.kernel_size == (1, 1) and c.stride != (1, 1)]
    blocks = [m for m in model.modules() if getattr(m, "shortcut", None) is not None]
    assert [b.shortcut_stride for b in blocks] == [2, 2]
    for size in (6, 7):   # odd sizes: conv stride 2 keeps ceil(size / 2) pixels, as [::2] does
        for block in blocks:
            conv, seen = block.shortcut, []
            x = torch.randn(2, conv.in_channels, size, size).contiguous(memory_format=torch.channels_last)
            hook = block.shortcut_norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
            block(x)
            hook.remove()
            want = torch.nn.functional.conv2d(x.contiguous(), conv.weight, stride=2) * conv.multiplier
            assert seen[0].shape == want.shape == (2, conv.out_channels, (size + 1) // 2, (size + 1) // 2)
            # one summation order vs another: in_channels products and the multiplier each side
            magnitude = (torch.nn.functional.conv2d(x.abs().contiguous(), conv.weight.abs(), stride=2)
                         * abs(conv.multiplier))
            assert_within_rounding(seen[0], want, both_sides(conv.in_channels + 1, magnitude, torch.float32))


def test_a_wrn_trains_at_one_thread_without_a_crash(tmp_path):
    # in a child process: the crash (abort or segfault, measured on an AVX2 AMD EPYC) kills its process
    import subprocess
    import sys

    script = ("import torch, torch.nn.functional as F\n"
              "from catapult.models import WRN\n"
              "torch.manual_seed(0)\n"
              "model = WRN(3, 4, depth=10, widen=1, channels=2)\n"
              "x, y = torch.randn(2, 3, 6, 6), torch.tensor([0, 3])\n"
              "for _ in range(3):\n"
              "    F.cross_entropy(model(x), y).backward()\n"
              "print('trained')\n")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "trained" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
