"""torch's Adam and RAdam keep ``state["step"]`` as a float32 tensor: at ``2**24`` the count stops
(``float32(2**24 + 1) == 2**24``), and the update's bias corrections and RAdam's rectification
``r_t`` reuse ``t = 2**24``. What catapult builds from the state (the RAdam threshold, Adam's
pre-conditioner, the next step's direction, the engine's row threshold) is of the step torch takes.

Truth: a NumPy re-derivation of torch's update at its own count (``t = 2**24``), which torch's
actual step is checked against first; ``t = 2**24 + 1`` (catapult's count before) moves the
bias corrections by ~2e-8 and ``r_t`` by ~3e-8 at the betas used (near 1, where ``b^t`` is not 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.critical_lr import next_step_direction
from catapult.curvature import instability_threshold
from catapult.curvature.preconditioner import adam_preconditioner
from catapult.curvature.sharpness import build_operator
from catapult.engine.sharpness_rule import step_kind, threshold
from catapult.optim.step_count import counted_step, torch_next_step

T = 2 ** 24
LR, EPS = 0.1, 1e-8
M0, V0 = np.array([0.3, -0.2]), np.array([0.04, 0.5])


def _stuck_optimizer(cls, betas, w):
    """``cls`` over ``w`` whose state is at a float32 count of ``2**24`` (as torch left it after
    2**24 steps or more), with given moments."""
    opt = cls([w], lr=LR, betas=betas, eps=EPS)
    opt.state[w] = {"step": torch.tensor(float(T), dtype=torch.float32),
                    "exp_avg": torch.tensor(M0), "exp_avg_sq": torch.tensor(V0)}
    return opt


def _adam_step(g, t, b1, b2):
    """torch Adam's update of theta from the state (M0, V0) at count ``t``, in NumPy."""
    m, v = b1 * M0 + (1 - b1) * g, b2 * V0 + (1 - b2) * g ** 2
    P = (1 - b1 ** t) * (np.sqrt(v / (1 - b2 ** t)) + EPS)
    return -LR * m / P, P


def _rectification(t, b2):
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    return np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def _radam_step(g, t, b1, b2):
    """torch RAdam's rectified update of theta from the state (M0, V0) at count ``t``, in NumPy."""
    m, v = b1 * M0 + (1 - b1) * g, b2 * V0 + (1 - b2) * g ** 2
    return -LR * m / (1 - b1 ** t) * _rectification(t, b2) * np.sqrt(1 - b2 ** t) / (np.sqrt(v) + EPS)


def _torch_step(opt, w, g):
    """torch's own update of ``w`` (from 0) with gradient ``g``; the count stays at 2**24."""
    w.grad = torch.tensor(g)
    opt.step()
    (state,) = opt.state.values()
    assert float(state["step"]) == T
    return w.detach().numpy().copy()


def test_the_truth_is_torchs_step_at_its_stopped_count():
    g = np.array([0.5, -1.5])
    for cls, betas, step in ((torch.optim.Adam, (1 - 1e-7, 1 - 1e-7), lambda t: _adam_step(g, t, 1 - 1e-7, 1 - 1e-7)[0]),
                             (torch.optim.RAdam, (0.9, 1 - 1e-8), lambda t: _radam_step(g, t, 0.9, 1 - 1e-8))):
        w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        moved = _torch_step(_stuck_optimizer(cls, betas, w), w, g)
        np.testing.assert_allclose(moved, step(T), rtol=1e-13, atol=0)
        assert not np.allclose(moved, step(T + 1), rtol=1e-9, atol=0)   # the test can tell the counts apart


def test_radam_threshold_is_of_torchs_count():
    b1, b2 = 0.9, 1 - 1e-8
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = _stuck_optimizer(torch.optim.RAdam, (b1, b2), w)
    want = (2 + 2 * b1) / ((1 - b1) * LR * _rectification(T, b2))
    assert instability_threshold(opt) == pytest.approx(want, rel=1e-12, abs=0)
    # the engine's row threshold at a row past 2**24 (the loop counts exactly; torch's count stopped)
    assert threshold(opt, step=T + 1000) == pytest.approx(want, rel=1e-12, abs=0)
    assert step_kind("hessian_then_preconditioned", opt, T + 1000) == "preconditioned"
    # a stateless copy keeps the row as given (the batched loop gives it as torch counts it)
    copy = torch.optim.RAdam([torch.zeros(1, requires_grad=True)], lr=LR, betas=(b1, b2), eps=EPS)
    exact = (2 + 2 * b1) / ((1 - b1) * LR * _rectification(T + 1001, b2))
    assert threshold(copy, step=T + 1000) == pytest.approx(exact, rel=1e-12, abs=0)


def test_adam_preconditioner_is_of_torchs_count():
    b1 = b2 = 1 - 1e-7
    model = torch.nn.Linear(2, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.5], [-1.0, 1.0]], dtype=torch.float64),
             torch.tensor([[1.0], [-3.0]], dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(b1, b2), eps=EPS)
    opt.state[model.weight] = {"step": torch.tensor(float(T)), "exp_avg": torch.tensor(M0[None]),
                               "exp_avg_sq": torch.tensor(V0[None])}
    op = build_operator(model, torch.nn.MSELoss(), batch)
    d, l2 = adam_preconditioner(model, opt, op)
    g = op.gradient().numpy()
    _, P = _adam_step(g, T, b1, b2)
    np.testing.assert_allclose(d.numpy() ** 2, 1 / P, rtol=1e-12, atol=0)
    assert l2 is None


def test_next_step_direction_is_torchs_step():
    b1 = b2 = 1 - 1e-7
    g = np.array([0.5, -1.5])
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = _stuck_optimizer(torch.optim.Adam, (b1, b2), w)
    ((_, u),) = next_step_direction(opt, {w: torch.tensor(g)})
    np.testing.assert_allclose(-LR * u.numpy(), _torch_step(opt, w, g), rtol=1e-13, atol=0)


def test_counts_as_torch_adds_them():
    assert [torch_next_step(torch.tensor(float(s))) for s in (0, 5, T - 1, T)] == [1, 6, T, T]
    assert torch_next_step(torch.tensor(float(T + 2))) == T + 4        # float32 rounds 2**24 + 3 to even
    assert torch_next_step(torch.tensor(float(T), dtype=torch.float64)) == T + 1
    assert torch_next_step(T) == T + 1 and torch_next_step(3.0) == 4   # a count written as a number
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.RAdam([w])
    assert counted_step(opt, T + 9) == T + 9                           # no state yet: as given
    w.grad = torch.ones(1)
    opt.step()
    assert counted_step(opt, T - 1) == T - 1 and counted_step(opt, T + 9) == T


def test_a_count_is_stepped_in_its_own_dtype_and_counted_to_that_dtypes_limit():
    """Mutation pass 20 (SC6, SC7, SC8): ``step + 1`` is formed in the count's own dtype, whatever it is (a
    float16 count stops at 2**11, float64's holds 2**24 + 1; SC8 formed it in Python floats for any dtype
    but float32); counted_step stops at the dtype's own limit (float64: 2**53, not float32's 2**24: SC6), and
    a state whose step is a plain number (an optimizer that counts in numbers) is counted as given (SC7 took
    its .is_floating_point() and raised AttributeError). Truth: torch's own in-place add in each dtype."""
    for dtype, n in ((torch.float16, 2.0 ** 11), (torch.float64, 2.0 ** 24), (torch.float32, 2.0 ** 24)):
        count = torch.tensor(n, dtype=dtype)
        count.add_(1)   # what torch's optimizers do to state["step"]
        assert torch_next_step(torch.tensor(n, dtype=dtype)) == int(count.item())
    assert torch_next_step(torch.tensor(2.0 ** 11, dtype=torch.float16)) == 2 ** 11
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w])
    opt.state[w]["step"] = torch.tensor(3.0, dtype=torch.float64)
    assert counted_step(opt, T + 5) == T + 5 and counted_step(opt, 2 ** 53 + 8) == 2 ** 53
    opt.state[w]["step"] = 3
    assert counted_step(opt, T + 5) == T + 5


def test_an_integer_tensor_count_is_counted_as_given():
    """Mutation pass 20 (SC4): a state whose step is an integer tensor (no float limit: an optimizer that
    counts in int64) is counted as given (SC4 asked torch.finfo of int64: TypeError)."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w])
    opt.state[w]["step"] = torch.tensor(3)
    assert counted_step(opt, T + 5) == T + 5 and counted_step(opt, 2 ** 60) == 2 ** 60
