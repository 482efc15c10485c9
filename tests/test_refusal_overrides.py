"""Every cross-key refusal that asks to remove a key names the key and, for the command line
(where a key the file sets cannot be taken out), an override that loads: applied to the refused
config, it clears that refusal. Several said only "remove optimizer.momentum" / "remove
data.augment", which no override does."""
from __future__ import annotations

import re
import shlex

import pytest

from catapult import config as cfg

MLP = {"name": "b", "model": {"name": "mlp", "width": 8, "depth": 3}, "optimizer": {"name": "sgd", "lr": 0.1},
       "train": {"steps": 10}}
GPT = {"name": "g", "data": {"name": "shakespeare"}, "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2},
       "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01}, "train": {"steps": 10, "batch_size": 4}}

CASES = [  # (config, overrides that make the refusal, the key refused)
    (GPT, ["optimizer.momentum=0.9"], "optimizer.momentum"),
    (MLP, ["optimizer.betas=[0.8,0.9]"], "optimizer.betas"),
    (MLP, ["optimizer.eps=1e-6"], "optimizer.eps"),
    (MLP, ["optimizer.v0=random"], "optimizer.v0"),
    (MLP, ["optimizer.v_bias_correction=false"], "optimizer.v_bias_correction"),
    (MLP, ["data.augment.flip=true", "data.augment.crop=1"], "data.augment"),
    (GPT, ["data.augment.mixup=0.5"], "data.augment"),
    (MLP, ["model.name=wrn", "model.depth=10", "model.width=16"], "model.width"),
    (MLP, ["data.context=16"], "data.context"),
    (MLP, ["model.init_std=0.1"], "model.init_std"),
    (MLP, ["model.widen=2"], "model.widen"),
    (MLP, ["model.final_norm=false"], "model.final_norm"),
    (MLP, ["data.cache_dir=/tmp"], "data.cache_dir"),
    (GPT, ["data.vocab_size=1000"], "data.vocab_size"),
    (GPT, ["model.init=trunc_normal"], "model.init"),
    (MLP, ["schedule.warmup=catapult", "schedule.lr_init=0.01"], "schedule.lr_init"),
    (MLP, ["eval.spectrum_block_size=2"], "eval.spectrum_block_size"),
    (MLP, ["model.parametrization=mup", "model.alpha_in=2"], "model.alpha_in"),
    (MLP, ["schedule.warmup=catapult", "schedule.lr_start=1"], "schedule.lr_start"),
]


@pytest.mark.parametrize("config, overrides, key", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_the_override_a_refusal_names_loads(config, overrides, key):
    mapping = cfg.apply_overrides(config, overrides)
    with pytest.raises(cfg.ConfigError) as refused:
        cfg.validate(mapping)
    message = dict(refused.value.problems)[key]
    found = re.search(r"on the command line: ([^)]*)\)", message)
    assert found, f"{key}: {message}"
    fixes = shlex.split(found[1])
    assert fixes and all(fix.split("=", 1)[0].startswith(key) for fix in fixes), fixes
    try:
        cfg.validate(cfg.apply_overrides(mapping, fixes))
    except cfg.ConfigError as err:
        assert key not in err.keys, str(err)


def test_the_text_key_refusal_names_its_override(tmp_path, capsys):
    from catapult.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    path = tmp_path / "t.yaml"
    path.write_text(f"data: {{name: text, root: {corpus}, context: 8, n_train: 16, n_test: 4, text_key: body}}\n"
                    "model: {name: gpt, width: 8, depth: 1, n_heads: 2}\nloss: cross_entropy\n"
                    "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 1, batch_size: 4}\n"
                    "eval: {sharpness_every: 0, test_every: 0}\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "data.text_key: names the text field" in (err := capsys.readouterr().err)
    fix = re.search(r"on the command line: ([^)]*)\)", err)[1]
    assert fix == "data.text_key=text"
    assert main(["train", str(path), "--out", str(tmp_path / "run"), fix, "--progress", "none"]) == 0


@pytest.mark.parametrize("fix", ["eval.sharpness_hvp=auto", "eval.sharpness_dtype=float64", "dtype=float64"])
def test_a_relu_model_under_finite_differences_names_the_measurements_own_fixes(fix):
    # "model.activation: use gelu or tanh (or dtype: float64)": the paper's ReLU FCN was told to
    # change its activation (or its whole run's dtype), not how its sharpness is measured
    mapping = cfg.apply_overrides(MLP, ["eval.sharpness_hvp=finite_difference"])
    with pytest.raises(cfg.ConfigError) as refused:
        cfg.validate(mapping)
    message = dict(refused.value.problems)["model.activation"]
    assert fix.replace("=", ": ") in message, message
    assert cfg.validate(cfg.apply_overrides(mapping, [fix]))["model"]["activation"] == "relu"
