"""``schedule.rtol`` below the run dtype's eps is refused when the config is checked, naming the key,
the dtype and its eps: the critical-lr search cannot halve its bracket below the parameters'
resolution (trial steps that close to lr_c round to the same parameters and loss), and before,
``schedule.rtol=1e-20`` was accepted and only warned about by critical_lr once the run had started
(float32: the bracket [0.50000003, 0.50000003] missed lr* = 1/2). Truth: ``torch.finfo(dtype).eps``."""
from __future__ import annotations

import pytest
import torch

from catapult import cli
from catapult import config as C


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_rtol_below_the_dtypes_eps_is_refused_and_eps_itself_is_taken(dtype):
    eps = torch.finfo(getattr(torch, dtype)).eps
    for rtol in (eps / 2, 1e-20):
        with pytest.raises(C.ConfigError) as err:
            C.validate({"dtype": dtype, "schedule": {"warmup": "catapult", "rtol": rtol}})
        assert [key for key, _ in err.value.problems] == ["schedule.rtol"]
        assert f"below the resolution of {dtype} (eps {eps!r})" in str(err.value)
    taken = C.validate({"dtype": dtype, "schedule": {"warmup": "catapult", "rtol": eps}})
    assert taken["schedule"]["rtol"] == eps


def test_a_float32_rtol_float64_can_honour_is_taken_there():
    rtol = torch.finfo(torch.float32).eps / 4
    with pytest.raises(C.ConfigError, match="use rtol >= 1.1920928955078125e-07 or dtype: float64"):
        C.validate({"schedule": {"rtol": rtol}})   # the default dtype, float32
    assert C.validate({"dtype": "float64", "schedule": {"rtol": rtol}})["schedule"]["rtol"] == rtol


def test_the_cli_refuses_it_with_exit_2_before_any_work(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits, n_train: 16, n_test: 8}\nmodel: {width: 4, depth: 2}\n"
                      "schedule: {warmup: catapult}\ntrain: {steps: 1}\n")
    code = cli.main(["critical-lr", str(config), "schedule.rtol=1e-20", "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and captured.out == ""
    assert "schedule.rtol" in captured.err and "float32 (eps 1.1920928955078125e-07)" in captured.err
