"""model.sparsity keys whose schedule never changes a mask: refused before any work (they ran as
a dense gmp model or a static rigl one, recorded under the method and density asked for)."""
from __future__ import annotations

import pytest

from catapult.config import ConfigError, validate
from catapult.engine.build import build_run


def _config(steps=20, **sparsity):
    return {"data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 8},
            "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "density": 0.25, "sparsity": sparsity},
            "optimizer": {"name": "adam", "lr": 1e-3}, "loss": "cross_entropy",
            "train": {"steps": steps, "batch_size": 4}, "eval": {"sharpness_every": 0, "test_every": 0}}


def _update_steps(method, steps, update_every, start_fraction, end_fraction):
    """The steps whose masks change, from the module docstring of catapult.sparsity.dynamic (t_0 and
    T_end the nearest steps to the fractions of train.steps)."""
    start, end = round(start_fraction * steps), round(end_fraction * steps)
    if method == "rigl":
        return [t for t in range(1, steps) if t % update_every == 0 and t < end]
    return [t for t in range(1, steps) if start <= t <= end and (t % update_every == 0 or t == end)]


@pytest.mark.parametrize("sparsity, key", [
    (dict(method="gmp", update_every=5, start_fraction=0.8, end_fraction=0.5), "model.sparsity.start_fraction"),
    (dict(method="gmp", update_every=5, end_fraction=0.01), "model.sparsity.end_fraction"),
    (dict(method="rigl", update_every=50, end_fraction=0.75), "model.sparsity.update_every"),
    (dict(method="rigl", update_every=15, end_fraction=0.75), "model.sparsity.update_every"),
    (dict(method="rigl", update_every=1, end_fraction=0.05), "model.sparsity.update_every"),
])
def test_a_schedule_without_a_mask_update_is_refused_naming_the_key(sparsity, key):
    # gmp with start_fraction 0.8 > end_fraction 0.5 (or T_end = 0) trained the model dense
    # (model_density 1.0) under model.density 0.25; rigl with update_every >= T_end never moved a mask
    steps = 20
    full = dict(dict(update_every=100, start_fraction=0.0, end_fraction=0.75), **sparsity)
    assert _update_steps(full["method"], steps, **{k: v for k, v in full.items() if k != "method"}) == []
    with pytest.raises(ConfigError) as refused:
        validate(_config(steps, **sparsity))
    assert [k for k, _ in refused.value.problems] == [key]
    assert "never" in str(refused.value)


@pytest.mark.parametrize("sparsity", [
    dict(method="gmp", update_every=100, start_fraction=0.5, end_fraction=0.5),   # one-shot prune at T_end
    dict(method="gmp", update_every=5, end_fraction=0.05),                       # T_end = 1
    dict(method="rigl", update_every=14, end_fraction=0.75),                     # one update, at 14
])
def test_a_schedule_with_an_update_is_accepted_and_updates_where_the_rule_says(sparsity):
    steps = 20
    config = validate(_config(steps, **sparsity))
    full = config["model"]["sparsity"]
    expected = _update_steps(full["method"], steps, full["update_every"], full["start_fraction"],
                             full["end_fraction"])
    assert expected
    updater = build_run(config).mask_updater
    assert [t for t in range(steps) if updater.is_update_step(t)] == expected


def test_a_zero_step_run_and_static_masks_are_not_checked():
    # accepted as written (a refusal raises ConfigError)
    assert validate(_config(0, method="rigl"))["model"]["sparsity"]["method"] == "rigl"   # nothing trains
    static = validate(_config(20, method="static", update_every=100))["model"]["sparsity"]   # no schedule
    assert (static["method"], static["update_every"]) == ("static", 100)


def test_the_cli_exits_2_naming_the_key(tmp_path, capsys):
    import yaml

    from catapult.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(20, method="gmp", start_fraction=0.9, end_fraction=0.5)))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "model.sparsity.start_fraction" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()



def test_a_zero_step_dynamic_run_evaluates_its_model():
    from catapult.engine import run

    for method in ("rigl", "gmp"):
        result = run(_config(0, method=method), progress="none")
        assert result.status == "finished" and len(result.metrics) == 1


@pytest.mark.parametrize("end_fraction", [1.0, 0.99])
def test_gmp_ending_with_training_ends_at_the_final_density(end_fraction):
    # T_end = round(end_fraction * steps) = steps fell after the last update (t = steps - 1): the
    # run ended at density 0.2617 (the prune of step 15) under model.density 0.25
    import math

    from catapult.engine import run
    from catapult.sparsity import masked_modules

    config = _config(20, method="gmp", update_every=5, end_fraction=end_fraction)
    config["model"]["width"] = 16
    result = run(config, progress="none")
    masked = list(masked_modules(result.model))
    assert len(masked) == 4   # the GPT's 4 masked matrices (measured): a loop over none checked nothing
    for name, module in masked:
        parts = getattr(module, "catapult_mask_parts", 1)
        for block in module.mask.chunk(parts, dim=0):
            assert int(block.sum()) == math.floor(0.25 * block.numel() + 0.5), name   # the static count
