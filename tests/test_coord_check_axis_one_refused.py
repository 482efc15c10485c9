"""``coord_check.widths: [8.5, 16]`` is two widths, one of them no integer: the refusal named entry 1
and then also said "a slope needs two values or more, got one (16); for that one value set
model.width=16 and coord_check.widths=null", advice for a list the user never gave. Now only the
bad entry is named; a list of one value is still told how to say it."""
from __future__ import annotations

import yaml

from catapult.cli import main


def _config(tmp_path):
    config = dict(name="cc", seed=0, data=dict(name="digits", n_train=32, n_test=16),
                  model=dict(name="mlp", width=16, depth=3, parametrization="supar", base_width=8),
                  loss="cross_entropy", optimizer=dict(name="adam", lr=0.01), train=dict(batch_size=16),
                  coord_check=dict(widths=[8, 16], seeds=[0], steps=1))
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_values_one_refused_are_not_called_one_value(tmp_path, capsys):
    out = tmp_path / "never"
    for override, bad in (("coord_check.widths=[8.5,16]", "entry 1 of 2"),
                          ("coord_check.densities=[0.5,1.5]", "entry 2 of 2")):
        assert main(["coord-check", str(_config(tmp_path)), override, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert bad in err and "got one" not in err and "for that one value" not in err, err
        assert "Traceback" not in err and not out.exists()
    assert main(["coord-check", str(_config(tmp_path)), "coord_check.widths=[16]", "--out", str(out)]) == 2
    assert "a slope needs two values or more, got one (16)" in capsys.readouterr().err
