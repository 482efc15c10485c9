"""Coordinate check: SμPar is flat over density, SP shrinks; rows, slopes and plots."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.coord_check import coord_check, coord_slopes, find_blocks, plot_coord_check
from catapult.models import GPT, MLP

V = 64
DENSITIES = [1 / 8, 1 / 2, 1.0]


pytestmark = pytest.mark.usefixtures("single_thread")


def _lm_batch():
    idx = torch.randint(0, V, (8, 17), generator=torch.Generator().manual_seed(0))
    return idx[:, :-1], idx[:, 1:]


def test_gpt_supar_is_flat_over_density_and_sp_shrinks():
    """The SμPar paper's Fig. 5 in miniature (d_model 128, 2 layers, Adam, 3 steps)."""
    batch = _lm_batch()
    slopes = {}
    for param in ("sp", "supar"):
        rows = coord_check(lambda rho: GPT(V, 128, 2, 4, 16, parametrization=param, density=rho),
                           DENSITIES, batch=batch, steps=3, seeds=(0,), lr=1e-3)
        slopes[param] = coord_slopes(rows)
    for block in ("attention", "mlp"):
        for step in range(3):
            assert abs(slopes["supar"][(block, step)]) < 0.15, (block, step, slopes["supar"])
            # SP: each sparse matrix scales its output by sqrt(rho), two in a row -> ~rho^1
            assert slopes["sp"][(block, step)] > 0.6, (block, step, slopes["sp"])
        assert abs(slopes["sp"][("embedding", 0)]) < 1e-6  # embeddings are dense


def test_mlp_rows_and_mup_over_width():
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    rows = coord_check(lambda w: MLP(20, 5, int(w), 3, parametrization="mup", base_width=32),
                       [32, 128, 512], batch=(x, y), steps=2, seeds=(0, 1), lr=0.05,
                       optimizer="sgd")
    assert len(rows) == 3 * 2 * 2 * 3  # values x seeds x steps x modules
    assert set(rows[0]) == {"value", "seed", "step", "block", "module", "mean_abs", "loss"}
    assert {r["block"] for r in rows} == {"input", "hidden", "logits"}
    slopes = coord_slopes(rows)
    assert abs(slopes[("hidden", 0)]) < 0.1 and abs(slopes[("hidden", 1)]) < 0.2
    assert slopes[("logits", 0)] == pytest.approx(-0.5, abs=0.2)  # muP output ~ 1/sqrt(width)
    # the recorded value is the mean |output| of that module, checked by hand at step 0
    torch.manual_seed(1)
    model = MLP(20, 5, 128, 3, parametrization="mup", base_width=32)
    expected = model.layers[0](x).abs().mean().item()
    got = [r["mean_abs"] for r in rows
           if r["value"] == 128 and r["seed"] == 1 and r["step"] == 0 and r["module"] == "layers.0"]
    assert got == [pytest.approx(expected, rel=1e-6)]


def test_blocks_explicit_and_errors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="blocks"):
        find_blocks(model)
    with pytest.raises(ValueError, match="no module named"):
        find_blocks(model, {"5": "x"})
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    rows = coord_check(lambda w: torch.nn.Sequential(torch.nn.Linear(4, int(w)), torch.nn.ReLU(),
                                                     torch.nn.Linear(int(w), 2)),
                       [8, 16], batch=lambda step: (x, y), steps=2, seeds=(0,),
                       blocks={"0": "hidden", "2": "logits"}, optimizer="sgd", lr=0.1)
    assert {r["module"] for r in rows} == {"0", "2"}
    fig = plot_coord_check(rows, tmp_path / "cc.png", xlabel="width")
    assert (tmp_path / "cc.png").stat().st_size > 1000
    assert len(fig.axes) == 2
    fig = plot_coord_check(rows, tmp_path / "steps.png", panels="step")
    assert len(fig.axes) == 2 and (tmp_path / "steps.png").exists()
    with pytest.raises(ValueError, match="steps"):
        coord_check(lambda w: model, [1], batch=(x, y), steps=0)


def test_a_diverging_run_is_recorded_not_raised():
    x, y = torch.randn(16, 4) * 1e3, torch.randint(0, 2, (16,))
    rows = coord_check(lambda w: MLP(4, 2, 16, 3), [16], batch=(x, y), steps=6, seeds=(0,),
                       lr=1e6, optimizer="sgd")
    assert len(rows) == 6 * 3
    assert any(not math.isfinite(r["mean_abs"]) or r["mean_abs"] > 1e6 for r in rows)


def test_activation_table_and_block_order_from_known_rows():
    from catapult.coord_check import activation_table, block_order

    assert block_order(["logits", "zzz", "mlp", "embedding", "mlp"]) == ["embedding", "mlp", "logits", "zzz"]
    rows = [{"value": v, "seed": s, "step": t, "block": b, "module": m, "mean_abs": x, "loss": 0.0}
            for v, s, t, b, m, x in [
                (1.0, 0, 0, "mlp", "a", 2.0), (1.0, 0, 0, "mlp", "b", 4.0),   # modules averaged: 3
                (1.0, 1, 0, "mlp", "a", 5.0), (1.0, 1, 0, "mlp", "b", 5.0),   # seed 1: 5 -> seed mean 4
                (0.5, 0, 0, "mlp", "a", 1.0), (0.5, 0, 0, "mlp", "b", 1.0),
                (0.5, 0, 2, "mlp", "a", 7.0), (1.0, 0, 2, "mlp", "a", 8.0),
                (1.0, 0, 0, "embedding", "e", 0.25)]]
    lines = activation_table(rows).splitlines()
    assert lines[0] == "| block | step | 0.5 | 1 |"
    assert lines[2:] == ["| embedding | 0 |  | 0.25 |", "| embedding | 2 |  |  |",
                         "| mlp | 0 | 1 | 4 |", "| mlp | 2 | 7 | 8 |"]


def test_the_callers_rng_is_left_as_it_was_and_runs_repeat_bit_for_bit():
    # coord_check called torch.manual_seed(seed) per run and never restored the global RNG: a
    # user's own draws after it changed (to the last seed's stream plus the dropout draws)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))

    def make(w):
        return torch.nn.Sequential(torch.nn.Linear(4, int(w)), torch.nn.Dropout(0.5), torch.nn.Linear(int(w), 2))

    def check():
        return coord_check(make, [8, 16], batch=(x, y), steps=2, seeds=(3, 4), blocks={"0": "hidden", "2": "logits"})

    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    first = check()
    assert torch.equal(torch.rand(5), expected)
    torch.manual_seed(99)               # the runs' own draws do not depend on the caller's state
    assert check() == first
    # each run is seeded: a model built under torch.manual_seed(seed) starts from the same weights
    torch.manual_seed(3)
    reference = make(8)(x).detach().abs().mean().item()   # dropout draws follow the init draws
    assert [r["mean_abs"] for r in first if r["step"] == 0 and r["module"] == "2"][0] == reference


@pytest.mark.parametrize("device, gpus, words", [
    ("cuda", 0, "CUDA is not available"), ("cuda:1", 0, "CUDA is not available"),
    ("cuda:1", 1, "this machine has 1 CUDA device(s)"), ("gpu", 0, "torch device"), (3.5, 0, "torch device")])
def test_a_device_it_cannot_use_is_a_value_error_naming_device_before_any_run(monkeypatch, device, gpus, words):
    # device="cuda" without CUDA was torch's AssertionError ("Torch not compiled with CUDA
    # enabled") from model.to after the first model was built; "gpu" a RuntimeError; cuda:1 on a
    # 1-GPU machine torch's "invalid device ordinal"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)   # any machine: `gpus` GPUs visible
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    built = []
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match="device") as info:
        coord_check(lambda w: built.append(w) or torch.nn.Linear(4, 2), [8], batch=(x, y), steps=1,
                    blocks={"": "logits"}, device=device)
    assert words in str(info.value) and built == []


def test_a_module_applied_twice_is_averaged_over_both_outputs():
    # Only the last call's output was recorded (the hook overwrote the first).
    import torch.nn as nn

    from catapult.coord_check import coord_check

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.shared, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.shared.catapult_block = "hidden"

        def forward(self, x):
            return self.out(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.inp(x)))))))

    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    rows = coord_check(lambda v: Twice(), [1], batch=(x, y), steps=1, seeds=[3], lr=0.1, optimizer="sgd")
    torch.manual_seed(3)
    net = Twice()
    with torch.no_grad():
        first = net.shared(torch.tanh(net.inp(x)))
        second = net.shared(torch.tanh(first))
    expected = (first.abs().sum() + second.abs().sum()).item() / 40
    assert rows[0]["mean_abs"] == pytest.approx(expected, rel=1e-6)


def test_a_wrn_is_checked_at_every_conv_not_only_its_logits():
    # The WRN tagged only its readout with catapult_block, which turned off the role fallback:
    # its coordinate check recorded the logits alone.
    from catapult.models import WRN

    net = WRN(1, 10, depth=10, widen=2, parametrization="mup", base_widen=1)
    found = {name: block for name, (_, block) in find_blocks(net).items()}
    convs = {name: m.catapult_role for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert found == {**convs, "readout": "logits"}
    assert found["stem"] == "input" and found["blocks.1.conv2"] == "hidden"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"optimizer": "lion"}, ValueError, r"coord_check optimizer must be 'sgd', 'adam', 'adamw'"),
    ({"optimizer": "radam"}, ValueError, r"coord_check optimizer must be"),
    ({"optimizer": None}, ValueError, r"coord_check optimizer must be"),
    ({"lr": float("nan")}, ValueError, r"coord_check lr must be"),
    ({"lr": "a"}, ValueError, r"coord_check lr must be"),
    ({"blocks": ["0"]}, TypeError, r"coord_check blocks must be a mapping"),
    ({"loss_fn": 3}, TypeError, r"coord_check loss_fn must be a callable"),
    ({"values": ["a"]}, ValueError, r"coord_check values must be a finite number > 0; got 'a'"),
    ({"values": [8, 0]}, ValueError, r"coord_check values must be a finite number > 0; got 0"),
])
def test_bad_arguments_are_refused_naming_them_before_any_model_is_built(kwargs, error, words):
    # 'lion' was param_groups' refusal listing gi-adam and radam (which coord_check refuses too),
    # blocks=['0'] "'list' object has no attribute 'items'", loss_fn=3 "'int' object is not
    # callable", values=['a'] the model's own error: each after the first model was built
    built = []

    def make(width):
        built.append(width)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    args = {"values": [8], "batch": (x, y), "steps": 1, "seeds": (0,), "blocks": {"0": "hidden"}, **kwargs}
    with pytest.raises(error, match=words):
        coord_check(make, args.pop("values"), **args)
    assert built == []


def test_an_optimizer_factory_sets_the_learning_rate_and_an_lr_beside_it_is_refused():
    # before: lr=0.5 beside a factory was silently ignored (the factory's 0.1 ran)
    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1, 1, 0])
    built = []

    def make(width):
        built.append(width)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    factory = lambda model: torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"coord_check lr=0.5 with an optimizer factory"):
        coord_check(make, [8], batch=(x, y), steps=2, seeds=(0,), blocks={"0": "hidden"}, lr=0.5, optimizer=factory)
    assert built == []
    rows = coord_check(make, [8], batch=(x, y), steps=2, seeds=(0,), blocks={"0": "hidden"}, optimizer=factory)
    torch.manual_seed(0)   # the truth: one hand-written SGD step at the factory's 0.1
    model = make(8)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    after = torch.nn.functional.cross_entropy(model(x), y).item()
    assert [r["loss"] for r in rows] == [pytest.approx(loss.item(), rel=1e-6), pytest.approx(after, rel=1e-6)]
    with pytest.raises(TypeError, match=r"coord_check optimizer: the factory .* returned None, not an optimizer"):
        coord_check(make, [8], batch=(x, y), steps=1, seeds=(0,), blocks={"0": "hidden"}, optimizer=lambda m: None)


def test_labels_past_the_models_outputs_are_refused_before_the_loss_indexes_with_them():
    # before: torch's "IndexError: Target 7 is out of bounds." traceback (a device-side assert on CUDA)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 7, 1, 2, 0])
    make = lambda width: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"coord_check batch \(step 0\): label 7 is out of range for 5 classes"):
        coord_check(make, [8], batch=(x, y), steps=2, seeds=(0,), blocks={"0": "hidden"})
    late = lambda step: (x, y if step == 1 else y.clamp(max=4))
    with pytest.raises(ValueError, match=r"coord_check batch \(step 1\): label 7"):
        coord_check(make, [8], batch=late, steps=2, seeds=(0,), blocks={"0": "hidden"}, optimizer="sgd")
    ignored = y.clone()
    ignored[2] = -100   # cross-entropy's ignore_index: a label that is left out, not out of range
    assert len(coord_check(make, [8], batch=(x, ignored), steps=1, seeds=(0,), blocks={"0": "hidden"})) == 1
