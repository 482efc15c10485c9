"""``hvp='compiled'`` falls back to the eager transform where the compiled call fails. A compiled call
that had run part of the user's forward before it failed (dynamo runs the frame eagerly up to a graph
break) left the state the forward carries in a plain attribute (``self.h = h.detach()``) moved on,
as a tensor escaped from the transform, and the eager retry then ran on it: torch's internal assert
('level.has_value() && level <= current_level ... escaped?'), seen once in the whole suite where the
first compiled product of that model in the process failed. The retry starts from the user's state."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import compiled
from dense_curvature import dense_hessian
from test_stateful_forward_curvature import MemoryAt, memory_problem


def test_the_eager_retry_after_a_failed_compiled_product_starts_from_the_users_state(monkeypatch):
    # (the compiled gradient's retry goes through the same _run_kept; sharpness calls only the product)
    name = "product"
    model, batch = memory_problem()   # (the stateful model of test_stateful_forward_curvature)
    state = model.h
    truth = np.linalg.eigvalsh(dense_hessian(MemoryAt(model, state.clone()), nn.MSELoss(), batch).numpy())[-1]

    def fails_after_running(*args):   # a compiled call that ran the forward eagerly, then failed
        compiled._EAGER[name](*args)
        raise torch._dynamo.exc.TorchRuntimeError("stand-in for a backend failure after a graph break")

    monkeypatch.setattr(compiled, "compile_failures", {})
    # (the gradient, which the certificate may take, runs eagerly: no real compile in this test)
    monkeypatch.setattr(compiled, "_COMPILED", {name: fails_after_running, "gradient": compiled._EAGER["gradient"]})
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp="compiled")
    assert estimate.value == pytest.approx(truth, rel=1e-8)
    assert model.h is state


class Boom(Exception):
    """The user's own failure (a bad batch)."""


def test_the_users_own_exception_in_a_compiled_call_is_raised_not_taken_for_a_compile_failure(monkeypatch):
    # a forward that raises once (a bad batch) inside a compiled call that works: it was caught as a
    # compile failure, retried eagerly (which passed), and hvp='compiled' given up for the process
    # with a warning naming the user's error; now it reaches the caller as raised, the mode is kept
    model, batch = memory_problem()
    state = model.h
    err, armed = Boom("bad batch"), [True]

    def works(*args):   # a compiled call that works (the eager function), with the user's forward in it
        if armed[0]:
            armed[0] = False
            raise err
        return compiled._EAGER["product"](*args)

    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {"product": works, "gradient": compiled._EAGER["gradient"]})
    with pytest.raises(Boom) as caught:
        catapult.sharpness(model, nn.MSELoss(), batch, hvp="compiled")
    assert caught.value is err and compiled.compile_failures == {} and model.h is state


def test_a_compile_failure_that_torchs_own_code_raises_falls_back_to_the_eager_function(monkeypatch):
    # an error raised inside torch (its innermost frame in torch's package), not one of dynamo's own
    # exceptions: a compile failure like any other, so the product runs eagerly, with the warning
    model, batch = memory_problem()
    truth = np.linalg.eigvalsh(dense_hessian(MemoryAt(model, model.h.clone()), nn.MSELoss(), batch).numpy())[-1]

    def fails_in_torch(*args):
        torch._check(False, lambda: "stand-in for a lowering failure")

    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {"product": fails_in_torch, "gradient": compiled._EAGER["gradient"]})
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp="compiled")
    assert estimate.value == pytest.approx(truth, rel=1e-8)
    assert "stand-in for a lowering failure" in compiled.compile_failures["product"]


def test_the_eager_retry_after_a_failed_compiled_gradient_starts_from_the_users_state(monkeypatch):
    # the compiled gradient (the base the differences subtract) retries through the same path: its
    # retry gets the restore too, so the gradient is the one at the user's state
    from catapult.curvature import HessianOperator

    model, batch = memory_problem()
    state = model.h
    fixed = MemoryAt(model, state.clone())
    truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(nn.MSELoss()(fixed(batch[0]), batch[1]),
                                                                 list(fixed.parameters()))])

    def fails_after_running(*args):   # a compiled call that ran the forward eagerly, then failed
        compiled._EAGER["gradient"](*args)
        raise torch._dynamo.exc.TorchRuntimeError("stand-in for a backend failure after a graph break")

    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {"gradient": fails_after_running, "product": compiled._EAGER["product"]})
    op = HessianOperator(model, nn.MSELoss(), batch, hvp="compiled")
    with pytest.warns(RuntimeWarning, match="torch.compile failed on the gradient"):
        gradient = op.gradient()
    torch.testing.assert_close(gradient, truth, rtol=1e-10, atol=1e-12)
    assert model.h is state


def test_an_error_raised_in_inductors_generated_code_falls_back_to_the_eager_function(monkeypatch, tmp_path):
    # the wrapper inductor generates (a size assert failing in it) lives in its cache folder, not in
    # torch's package: its errors were taken for the user's own and raised, with no eager retry
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    _sharpness_falls_back_from(monkeypatch, tmp_path / "ab" / "cabcdef.py", "AssertionError",
                               "stand-in: expected size 4==5 at dim=0")


def _sharpness_falls_back_from(monkeypatch, path, error, message):
    """The compiled product replaced by a stand-in whose code lies at ``path`` and raises
    ``error(message)``: sharpness warns, falls back to the eager product (the dense Hessian's top
    eigenvalue) and records the failure."""
    model, batch = memory_problem()
    truth = np.linalg.eigvalsh(dense_hessian(MemoryAt(model, model.h.clone()), nn.MSELoss(), batch).numpy())[-1]
    scope = {}
    exec(compile(f"def call(*args):\n    raise {error}({message!r})\n", str(path), "exec"), scope)
    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {"product": scope["call"], "gradient": compiled._EAGER["gradient"]})
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp="compiled")
    assert estimate.value == pytest.approx(truth, rel=1e-8)
    assert message in compiled.compile_failures["product"]


def test_the_users_code_in_a_folder_named_like_inductors_cache_is_the_users(monkeypatch, tmp_path):
    # torch's code is what lies inside its folders: a user's folder whose name merely begins with the
    # cache folder's (".../torchinductor" and ".../torchinductor_models", as ".../torch" and
    # ".../torch_geometric") holds the user's code, whose exception is raised, not retried eagerly
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))
    model, batch = memory_problem()
    source = ("def call(*args):\n"
              "    if armed:\n"
              "        armed.pop()\n"
              "        raise Boom('bad batch')\n"
              "    return eager(*args)\n")
    scope = {"armed": [True], "Boom": Boom, "eager": compiled._EAGER["product"]}
    exec(compile(source, str(tmp_path / "torchinductor_models" / "net.py"), "exec"), scope)
    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setattr(compiled, "_COMPILED", {"product": scope["call"], "gradient": compiled._EAGER["gradient"]})
    with pytest.raises(Boom, match="bad batch"):
        catapult.sharpness(model, nn.MSELoss(), batch, hvp="compiled")
    assert compiled.compile_failures == {}


def test_an_error_raised_in_tritons_code_falls_back_to_the_eager_function(monkeypatch, tmp_path):
    # triton's package (where installed; here a stand-in found where find_spec says it lies) is
    # torch's code as inductor's generated kernels are: its errors are compile failures
    import importlib.util
    import types

    real = importlib.util.find_spec
    monkeypatch.setattr(compiled.importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
        origin=str(tmp_path / "triton" / "__init__.py")) if name == "triton" else real(name, *a))
    _sharpness_falls_back_from(monkeypatch, tmp_path / "triton" / "runtime" / "jit.py", "RuntimeError",
                               "stand-in: triton could not lower a kernel")
