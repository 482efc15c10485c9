"""``hvp="compiled"`` on a torch whose dynamo cannot trace ``torch.func``'s ``grad_and_value`` and
``vjp`` (torch 2.2.2: "Cannot access data pointer of Tensor that doesn't have storage" on both;
2.3.1 and 2.13 trace them). It warned twice there, each after a failed trace, the first naming only
a missing ``torch.nn.attention`` (``math_attention``'s import, a 2.3 module, inside the traced
loss); now it warns once, naming the setting and the torch version, and tries no compile. The
answers are the eager functions' on every torch (checked against a dense float64 Hessian)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.torch_version import TorchVersion

import catapult
from catapult.curvature import compiled
from dense_curvature import dense_hessian
from test_spectrum import small_problem


def _compiled_sharpness(model, loss_fn, batch):
    """``(value, [warning messages])`` of a compiled-mode sharpness, every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = catapult.sharpness(model, loss_fn, batch, tol=1e-10, hvp="compiled")
    return est.value, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _fresh_compiled_run(monkeypatch, seed: int):
    """A first ``hvp="compiled"`` call in a process with no compile record: its value equals the
    dense Hessian's top eigenvalue and it gave exactly one RuntimeWarning (returned)."""
    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {})
    model, loss_fn, batch = small_problem(seed=seed)
    truth = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    value, messages = _compiled_sharpness(model, loss_fn, batch)
    assert value == pytest.approx(truth, rel=1e-8)
    assert len(messages) == 1, messages
    return model, loss_fn, batch, truth, messages


def test_an_older_torch_runs_the_compiled_mode_eagerly_with_one_warning_and_no_compile(monkeypatch):
    # (torch's version set to 2.2.2: the rule on any torch; torch.compile must not even be called)
    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called on a torch that cannot trace the transforms")

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.2.2"))
    monkeypatch.setattr(torch, "compile", no_compile)
    model, loss_fn, batch, truth, messages = _fresh_compiled_run(monkeypatch, seed=2)
    assert messages[0].startswith("hvp='compiled': torch 2.2.2's torch.compile cannot trace")
    assert "torch 2.3 and later" in messages[0] and "eagerly" in messages[0]
    assert set(compiled.compile_failures) == {"gradient", "product"}
    value, messages = _compiled_sharpness(model, loss_fn, batch)   # the process keeps it: no new warning
    assert value == pytest.approx(truth, rel=1e-8) and messages == []


@pytest.mark.skipif(TorchVersion(torch.__version__) >= (2, 3), reason="this torch's dynamo traces torch.func's transforms: "
                                                          "torch 2.2 only")
def test_torch_2_2_warns_once_naming_the_setting_and_the_torch(monkeypatch):
    # the real torch 2.2: before, two warnings, the first "No module named 'torch.nn.attention'"
    _, _, _, _, messages = _fresh_compiled_run(monkeypatch, seed=3)
    assert f"torch {torch.__version__}'s" in messages[0] and "torch.nn.attention" not in messages[0]
