"""The training engine on text: a GPT on token windows, validated config, exact sharpness.

Independent truths: the windows are slices of the encoded text (checked by decoding); the
engine's lambda_0 for a GPT (attention through scaled_dot_product_attention, whose fused CPU
kernel has no double backward) equals the top eigenvalue of the dense Hessian from
``torch.autograd.functional.hessian``; a hand-written AdamW loop over the same windows gives
the same losses.
"""
from __future__ import annotations

import math

import pytest
import torch

from catapult import config as C
from catapult import curvature
from catapult.cli import main
from catapult.data import load_dataset
from catapult.losses import cross_entropy
from catapult.engine import BatchStream, build_model, load_data, run, seeds

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 6


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "hamlet.txt"
    path.write_text(TEXT)
    return path


def gpt_config(root, **sections):
    config = {
        "name": "gpt_tiny",
        "data": {"name": "text", "root": str(root), "context": 16, "n_train": 40, "n_test": 4},
        "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "activation": "gelu",
                  "parametrization": "supar", "density": 0.5},
        "loss": "cross_entropy",
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        "train": {"steps": 6, "batch_size": 8},
        "eval": {"sharpness_every": 0, "test_every": 3},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_text_data_are_consecutive_next_token_windows(text_file):
    split = load_dataset("text", root=text_file, context=16, n_train=5, n_test=2)
    assert split.x_train.dtype == torch.int64 and split.x_train.shape == (5, 16)
    assert torch.equal(split.x_train[:, 1:], split.y_train[:, :-1])  # y is x shifted by one
    decoded = split.vocab.decode(split.x_train.reshape(-1))
    assert decoded == TEXT[:80]                       # first N windows, in order, no gaps
    assert split.vocab.decode(split.y_train[-1]) == TEXT[65:81]
    with pytest.raises(ValueError, match="only"):
        load_dataset("text", root=text_file, context=16, n_train=10_000)


def test_config_checks_pair_text_with_the_gpt(text_file):
    with pytest.raises(C.ConfigError) as err:
        C.validate({"data": {"name": "shakespeare"}, "model": {"name": "mlp"}})
    assert "model.name" in err.value.keys
    with pytest.raises(C.ConfigError) as err:
        C.validate({"model": {"name": "gpt"}})
    assert "data.name" in err.value.keys
    with pytest.raises(C.ConfigError) as err:
        C.validate(gpt_config(text_file, model={"n_heads": 3}))
    assert "model.n_heads" in err.value.keys and "does not divide" in str(err.value)
    with pytest.raises(C.ConfigError) as err:
        C.validate(gpt_config(None, data={"root": None}))
    assert "data.root" in err.value.keys
    with pytest.raises(C.ConfigError) as err:
        C.validate({"model": {"init_std": 0.02}})
    assert "model.init_std" in err.value.keys and "gpt option" in str(err.value)
    with pytest.raises(C.ConfigError) as err:
        C.validate({"data": {"context": 32}})
    assert "data.context" in err.value.keys
    with pytest.raises(C.ConfigError) as err:   # the warmup paper's muP has no alpha multipliers
        C.validate({"model": {"parametrization": "mup", "alpha_in": 2.0}})
    assert "model.alpha_in" in err.value.keys
    # ... but sp ignores them, so one study config can sweep sp / mup / supar
    config = C.validate(gpt_config(text_file, model={"parametrization": "sp", "alpha_in": 9.0}))
    model = build_model(config, 16, 30)
    assert model.input_multiplier == 1.0


def test_gpt_run_matches_a_hand_written_adamw_loop(text_file):
    config = C.validate(gpt_config(text_file))
    result = run(config, progress="none")
    assert result.status == "finished" and len(result.metrics) == 7
    assert result.metrics[3]["test_loss"] is not None and result.metrics[1]["test_loss"] is None

    data = load_data(config)
    model = build_model(config, data.in_features, data.num_classes)
    import catapult

    opt = torch.optim.AdamW(catapult.param_groups(model, 3e-3, optimizer="adam"), lr=3e-3,
                            weight_decay=0.01)
    stream = BatchStream(data.x_train, data.y_train, 8, seeds(config["seed"])[1])
    for t in range(7):
        x, y = stream.batch(t)
        loss = cross_entropy(model(x), y)
        assert math.isclose(loss.item(), result.metrics[t]["train_loss"], rel_tol=1e-6), t
        opt.zero_grad()
        loss.backward()
        opt.step()
    # masks hold: the sparse hidden weights are still zero where masked after AdamW with decay
    for module in result.model.modules():
        if getattr(module, "mask", None) is not None:
            assert torch.all(module.weight[module.mask == 0] == 0)


def test_gpt_sharpness_through_attention_is_the_dense_hessian_top_eigenvalue(text_file):
    config = C.validate(gpt_config(text_file, dtype="float64",
                                   model={"width": 8, "n_heads": 2, "density": 1.0},
                                   data={"context": 6, "n_train": 12},
                                   eval={"sharpness_every": 3, "sharpness_tol": 1e-10,
                                         "sharpness_max_iter": 400},
                                   train={"steps": 3, "batch_size": None}))
    result = run(config, progress="none")
    lambda_0 = result.summary["lambda_0"]

    data = load_data(config, dtype=torch.float64)
    model = build_model(config, data.in_features, data.num_classes, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = flat[i:i + n].view(shape)
            i += n
        out = torch.func.functional_call(model, params, (data.x_train,))
        return cross_entropy(out, data.y_train)

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        math_only = sdpa_kernel([SDPBackend.MATH])
    except ImportError:   # torch 2.2: no torch.nn.attention; its older switch governs the CPU kernels too
        math_only = torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    with math_only:
        H = torch.autograd.functional.hessian(loss_of, flat0)
    top = torch.linalg.eigvalsh(H).max().item()
    assert lambda_0 == pytest.approx(top, rel=1e-6)
    # and the library call on the plain model (not through the engine) agrees
    est = curvature.sharpness(model, cross_entropy, (data.x_train, data.y_train), tol=1e-10, max_iter=400,
                              hvp="forward_over_reverse")
    assert est.value == pytest.approx(top, rel=1e-6)


def test_train_command_on_text_writes_the_run_directory(text_file, tmp_path):
    import yaml

    path = tmp_path / "gpt.yaml"
    path.write_text(yaml.safe_dump(gpt_config(text_file)))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--progress", "none"]) == 0
    assert {"config.yaml", "metrics.csv", "summary.json", "trajectories.png"} <= {p.name for p in out.iterdir()}
    assert main(["train", str(path), "model.n_heads=5", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
