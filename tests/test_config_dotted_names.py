"""A name with dots inside a config file (``optimizer.lr: 0.5`` at the top, ``model: {sparsity.method: rigl}``):
YAML reads it as one name, not a path, so it is refused (exit 2, before any work) -- but the message
said ``unknown key (did you mean 'optimizer.lr'?)``, the very key written, and ``model.spars.method``
was told ``did you mean 'model.spars.mask_method'``, which is no key either. Now the first says how to
write it (nested, or on the command line) and a suggestion is always a key of the config."""
from __future__ import annotations

import pytest
import yaml

from catapult import config as cfg
from catapult.cli import main
from catapult.config.errors import unknown_key_message

BASE = dict(name="tiny", seed=0, data=dict(name="digits", n_train=32, n_test=16),
            model=dict(name="mlp", width=8, depth=2), train=dict(steps=1), eval=dict(sharpness_every=0))


@pytest.mark.parametrize("extra, key, nested", [
    ({"optimizer.lr": 0.5}, "optimizer.lr", "optimizer: {lr: ...}"),
    ({"model": dict(BASE["model"], **{"sparsity.method": "rigl"})}, "model.sparsity.method", "sparsity: {method: ...}"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_dotted_name_in_a_file_is_told_to_nest(tmp_path, capsys, extra, key, nested, command):
    config = tmp_path / "c.yaml"
    document = {**BASE, **extra}
    if command == "sweep":
        document["sweep"] = {"grid": {"model.width": [8]}}
    config.write_text(yaml.safe_dump(document))
    out = tmp_path / ("s.db" if command == "sweep" else "run")
    assert main([command, str(config), "--store" if command == "sweep" else "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{key}: a name with dots is no path inside a config mapping: nest it ({nested})" in err
    assert f"or give {key}=... on the command line" in err
    assert "did you mean" not in err and not out.exists()


def test_a_suggestion_is_a_key_of_the_config():
    from catapult.config.validation import section_keys

    exists = set(cfg.leaf_keys()) | set(section_keys())
    model_fields = list(cfg.RunConfig.model_fields["model"].annotation.model_fields)
    message = unknown_key_message("model.spars.method", model_fields, cfg.leaf_keys(), exists)
    assert message == "unknown key (did you mean 'model.sparsity.method'?)"
    # what the sibling match still gives where its key exists
    assert unknown_key_message("optimizer.lrr", ["lr", "momentum"], cfg.leaf_keys(), exists) == \
        "unknown key (did you mean 'optimizer.lr'?)"
