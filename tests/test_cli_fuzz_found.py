"""Inputs a fuzzer found that ended in a traceback (mutations of the repository's configs run
through the CLI): each is now exit code 2 with one line naming the key, before any work."""
from __future__ import annotations

import re

import pytest

from catapult import cli
from tiny_run import tiny_config


def _error(capsys, tmp_path, command: str, *overrides: str, base: str | None = None) -> str:
    """Run ``catapult COMMAND`` on a tiny config with ``overrides``: exit code 2, one line on
    stderr, no traceback, no run directory; returns the message."""
    config = tmp_path / "tiny.yaml"
    config.write_text(base if base is not None else tiny_config("fuzz"))
    out = tmp_path / "run"
    argv = [command, str(config), *overrides, "--progress", "none", "--threads", "1"]
    if command == "train":
        argv += ["--out", str(out)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "radam"])
def test_a_weight_decay_beyond_float32_is_refused(capsys, tmp_path, optimizer):
    # was RuntimeError "value cannot be converted to type float without overflow" at the first
    # step: torch's coupled L2 is grad.add(param, alpha=weight_decay) in the parameters' dtype
    err = _error(capsys, tmp_path, "train", f"optimizer.name={optimizer}", "optimizer.weight_decay=1e300")
    assert "optimizer.weight_decay" in err and "float32" in err


@pytest.mark.parametrize("overrides, key", [
    (["optimizer.name=adam", "optimizer.lr=3e38"], "optimizer.lr"),          # step size 3e39 at beta1 0.9
    (["optimizer.name=gi-adam", "optimizer.lr=1e37", "optimizer.betas=[0.999, 0.999]"], "optimizer.lr"),
    (["optimizer.name=adamw", "schedule.lr_init=3e38", "schedule.warmup_steps=2"], "schedule.lr_init"),
    # a decay towards lr_final: 7.9e38 at step 1 of 3 (mutation pass 6, SF3: lr_final unchecked); a c/lambda0 lr,
    # as an lr_final above an absolute lr is refused for that alone
    (["optimizer.name=adam", "optimizer.lr=0.001/lambda0", "schedule.decay=cosine", "schedule.lr_final=3e38",
      "train.steps=3"], "schedule.lr_final"),
])
def test_an_adam_step_size_beyond_float32_is_refused(capsys, tmp_path, overrides, key):
    # torch's Adam hands addcdiv the scalar lr / (1 - beta1^t), 10 lr at the first step with
    # beta1 = 0.9: an lr within float32 (3e38) ended in "value cannot be converted to type float
    # without overflow" at the first step
    err = _error(capsys, tmp_path, "train", *overrides)
    assert key in err and "lr / (1 - beta1)" in err and "float32" in err


def test_a_relative_adam_lr_whose_step_size_is_beyond_float32_is_refused(capsys, tmp_path):
    # c within float32 passes validation; c / lambda_0 ~ 1e37 too (lambda_0 ~ 0.1 here), but the
    # first step size c / lambda_0 / (1 - beta1) = 1e4 c / lambda_0 is not
    err = _error(capsys, tmp_path, "train", "optimizer.name=adam", "optimizer.lr=1e36/lambda0",
                 "optimizer.betas=[0.9999, 0.999]")
    assert "optimizer.lr" in err and "lr / (1 - beta1)" in err and "lambda_0" in err


def test_an_adam_lr_within_the_step_size_range_still_trains(capsys, tmp_path):
    # the bound is the step size, not the lr: 3e38 under SGD, or 3e37 under Adam, diverge as results
    # float32's largest number itself is within its range (mutation pass 6, SS1: refused)
    for overrides in (["optimizer.lr=3e38"], ["optimizer.name=adam", "optimizer.lr=3e37"],
                      ["optimizer.lr=3.4028234663852886e+38"]):
        config = tmp_path / "tiny.yaml"
        config.write_text(tiny_config("fuzz"))
        assert cli.main(["train", str(config), *overrides, "--progress", "none", "--threads", "1", "--out",
                         str(tmp_path / overrides[-1])]) == 0



GPT = ("data: {name: shakespeare, context: 8, n_train: 16, n_test: 8}\n"
       "model: {name: gpt, width: 16, depth: 1, n_heads: 2, activation: gelu}\n"
       "loss: cross_entropy\noptimizer: {name: adam, lr: 0.001}\n"
       "train: {steps: 1, batch_size: 4}\neval: {sharpness_every: 0, test_every: 0}\n")


@pytest.mark.parametrize("overrides, words", [
    (["model.init_std=1e300", "dtype=float64"], "1.341e+154"),   # its square overflows a float
    (["model.init_std=1e200"], "float32"),                       # beyond float32 as well
])
def test_a_gpt_init_std_whose_variance_overflows_is_refused(capsys, tmp_path, overrides, words):
    # was OverflowError (34, 'Numerical result out of range') from init_std**2 in GPT.__init__
    err = _error(capsys, tmp_path, "train", *overrides, base=GPT)
    assert "model.init_std" in err and words in err


def test_the_api_refuses_an_init_std_whose_variance_overflows_naming_it():
    import torch

    import catapult
    from catapult.models import GPT as Model

    with pytest.raises(ValueError, match="GPT init_std must be at most 1.34078e"):
        Model(10, d_model=4, n_layers=1, n_heads=1, context=4, init_std=1e200)
    Model(10, d_model=4, n_layers=1, n_heads=1, context=4, init_std=1e150)  # its square is finite
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"parametrize\(\) init_std must be at most"):
        catapult.parametrize(net, "mup", init_std=1e200)


SUPAR = ("data: {name: digits, n_train: 32, n_test: 16}\n"
         "model: {width: 8, depth: 3, parametrization: supar, base_width: 64, density: 0.1}\n"
         "train: {steps: 2}\neval: {sharpness_every: 0, test_every: 0}\n")


@pytest.mark.parametrize("overrides, key", [
    (["optimizer.lr=1e38"], "optimizer.lr"),                                     # SGD hidden lr_mult 10
    (["optimizer.name=adam", "optimizer.lr=1e37"], "optimizer.lr"),              # Adam's 80, and 1 / (1 - 0.9)
    # (an lr_init above an absolute lr is refused first, as a warmup that falls: a c/lambda0 lr here)
    (["optimizer.lr=0.001/lambda0", "schedule.lr_init=1e38", "schedule.warmup_steps=2"], "schedule.lr_init"),
    # a decay towards lr_final: RuntimeError at step 1 of 3 (mutation pass 6, SS5: lr_final unchecked)
    (["optimizer.lr=0.001/lambda0", "schedule.decay=cosine", "schedule.lr_final=1e38", "train.steps=3"],
     "schedule.lr_final"),
])
def test_a_group_lr_multiplier_that_takes_the_step_beyond_float32_is_refused(capsys, tmp_path, overrides, key):
    # each lr is within float32, but the hidden group's lr is lr * (width / base_width)^-1 *
    # (density / base_density)^-1: RuntimeError "value cannot be converted to type float without
    # overflow" at the first step
    err = _error(capsys, tmp_path, "train", *overrides, base=SUPAR)
    assert key in err and "lr multiplier" in err and "float32" in err


def test_a_group_lr_multiplier_within_float32_still_trains(tmp_path):
    config = tmp_path / "supar.yaml"
    config.write_text(SUPAR)
    assert cli.main(["train", str(config), "optimizer.lr=1e37", "--progress", "none", "--threads", "1",
                     "--out", str(tmp_path / "run")]) == 0   # a hidden lr of 1e38: diverges, a result


def test_a_cuda_index_past_32_bits_is_refused_naming_device(capsys, tmp_path):
    # torch.device('cuda:99999999999999999999') raised RuntimeError "Could not parse device index"
    err = _error(capsys, tmp_path, "train", "device=cuda:99999999999999999999")
    assert "device" in err


@pytest.mark.parametrize("name", ["cuda:256", "cuda:200", "cuda:1"])
def test_a_cuda_index_past_the_devices_is_refused_as_written(monkeypatch, name):
    # torch.device keeps the index in 8 bits: cuda:256 was cuda:0 (a run silently on another GPU
    # than the one asked for), cuda:200 was cuda:-56; judged here on a machine with one GPU
    import torch

    from catapult import config as C
    from catapult.engine.build import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(C.ConfigError, match="1 CUDA device"):
        resolve_device(name)
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("line, words", [
    ("seed: 010\n", "010 as 8 (octal)"),            # YAML 1.1's octal: trained seed 8
    ("train: {steps: 1:30}\n", "1:30 as 90 (base 60)"),   # YAML 1.1's base 60: trained 90 steps
])
def test_a_number_yaml_reads_in_another_base_is_refused_not_reinterpreted(capsys, tmp_path, line, words):
    base = "data: {name: digits, n_train: 32, n_test: 16}\nmodel: {width: 8, depth: 2}\n" \
           "eval: {sharpness_every: 0, test_every: 0}\n" + line
    err = _error(capsys, tmp_path, "train", base=base)
    assert words in err and "line 4" in err


def test_numbers_in_their_plain_forms_still_load(tmp_path):
    from catapult import config as C

    path = tmp_path / "c.yaml"
    path.write_text("seed: 0x10\ntrain: {steps: 1_000}\noptimizer: {lr: 0.010}\nschedule: {warmup_steps: 10}\n")
    config = C.load_config(path, ["model.width=10"])   # (010 is refused here as in the file: test_override_digits)
    assert (config["seed"], config["train"]["steps"], config["optimizer"]["lr"]) == (16, 1000, 0.01)
    assert config["model"]["width"] == 10


def test_an_override_of_thousands_of_digits_is_refused_as_text_not_a_traceback(tmp_path):
    # hypothesis found it: int() of 5,000 digits raised "Exceeds the limit (4300 digits)" in parse_override
    from catapult import config as C

    path = tmp_path / "c.yaml"
    path.write_text("data: {name: digits, n_train: 16, n_test: 8}\nmodel: {width: 4, depth: 2}\n")
    with pytest.raises(C.ConfigError, match="data.augment.crop"):
        C.load_config(path, ["data.augment.crop=" + "9" * 5000])


def test_a_coord_check_seed_past_64_bits_is_refused_naming_it(capsys, tmp_path):
    # torch.manual_seed(2**64) raised ValueError "Overflow when unpacking long long" mid-study
    base = ("data: {name: digits, n_train: 32, n_test: 16}\nmodel: {width: 8, depth: 3, base_width: 8}\n"
            "optimizer: {lr: 0.1}\ntrain: {batch_size: 8}\n"
            "coord_check: {widths: [4, 8], seeds: [18446744073709551616], steps: 2}\n")
    err = _error(capsys, tmp_path, "coord-check", "--out", str(tmp_path / "cc"), base=base)
    assert "coord_check.seeds" in err and "18446744073709551615" in err
    assert not (tmp_path / "cc").exists()


@pytest.mark.parametrize("line, key, position", [
    ("yes: 1\n", "yes: unknown key", "line 4, column 1"),            # was "1: unknown key" (True)
    ("train: {steps: 2, on: 3}\n", "train.on: unknown key", "line 4"),   # was "train.1"
    ("Off: 1\n", "Off: unknown key", "line 4"),
    ("null: 1\n", "null: unknown key", "line 4"),
    ("0x10: 1\n", "0x10: unknown key", "line 4"),                   # was "16: unknown key", no position
    ("train: {1_000: 2}\n", "train.1_000: unknown key", "line 4"),  # was "train.1000"
    ("2024-01-01: 1\n", "2024-01-01: unknown key", "line 4"),
])
def test_a_key_yaml_reads_as_a_boolean_or_null_is_named_as_written(capsys, tmp_path, line, key, position):
    base = "data: {name: digits, n_train: 32, n_test: 16}\nmodel: {width: 8, depth: 2}\n" \
           "eval: {sharpness_every: 0, test_every: 0}\n" + line
    err = _error(capsys, tmp_path, "train", base=base)
    assert key in err and position in err


def test_boolean_values_still_read_as_booleans_and_such_keys_as_written():
    from catapult.config.io import safe_yaml

    assert safe_yaml("a: yes\nx: {off: [on, null]}\n'true': 1\n") == {"a": True, "x": {"off": [True, None]},
                                                                      "true": 1}


@pytest.mark.parametrize("text, value", [
    ("0_10", 8), ("-010", -8), ("+010", 8),          # YAML 1.1 octal: underscores and a sign too
    ("1:30:00", 5400), ("1_0:30", 630),              # base 60: any number of colon groups
    ("1:30.5", 90.5), ("-0:30.5", -30.5),            # base 60 floats
])
def test_every_yaml_1_1_other_base_form_is_refused_at_its_line(text, value):
    # YAML 1.1's int and float patterns (PyYAML's resolver), each read as another number than
    # YAML 1.2 or JSON would (mutation pass 6: YA1-YA4, YA6 left one form each to be used silently)
    import yaml

    from catapult.config.io import safe_yaml

    assert yaml.safe_load(f"x: {text}") == {"x": value}   # what PyYAML alone would have used
    with pytest.raises(yaml.YAMLError, match=rf"(?s)reads {re.escape(text)} as {re.escape(str(value))} .*line 2, column 4"):
        safe_yaml(f"a: 1\nx: {text}\n")


def test_an_empty_key_stays_yaml_null():
    # a key written as nothing is YAML's null, not the empty string (mutation pass 6, YA8: ''), and
    # a quoted key is text as written
    from catapult.config.io import safe_yaml

    assert safe_yaml("? \n: 1\n") == {None: 1}
    assert safe_yaml("'yes': 1\n\"null\": 2\n") == {"yes": 1, "null": 2}


@pytest.mark.parametrize("optimizer", ["adam", "gi-adam"])
def test_an_adam_eps_beyond_float32_is_refused(capsys, tmp_path, optimizer):
    # eps = 1e39 became inf in float32: every step divided by it, and the run trained nothing
    # without a word (exit 0; mutation pass 6's report)
    err = _error(capsys, tmp_path, "train", f"optimizer.name={optimizer}", "optimizer.eps=1e39")
    assert "optimizer.eps" in err and "float32" in err
