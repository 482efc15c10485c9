"""PersistentCatapultWarmup (the warmup paper's Alg. 3): reaching lr_target where a constant lr
diverges, its searches and warm starts, state_dict, and the numbers it takes (split from
test_schedules.py)."""
from __future__ import annotations

import io
import math

import pytest
import torch

from catapult import schedules
from catapult.schedules import attach, warmup
from warmup_problems import catapult_problem as _catapult_problem
from warmup_problems import half_mse as _mse
from warmup_problems import two_group_sgd as _two_group_sgd

# --------------------------------------------------------------------------------------------
# PersistentCatapultWarmup
# --------------------------------------------------------------------------------------------
def _gd(model, batch, steps, *, lr=None, pcw=None):
    """Full-batch GD; returns (losses, lrs); stops at a non-finite or exploded loss."""
    opt = pcw.optimizer if pcw is not None else torch.optim.SGD(model.parameters(), lr=lr)
    losses, lrs = [], []
    for _ in range(steps):
        loss = _mse(model(batch[0]), batch[1])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e3 * losses[0]:
            break
        opt.zero_grad()
        loss.backward()
        lrs.append(pcw.step(batch, loss=loss) if pcw is not None else lr)
        opt.step()
    return losses, lrs


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids oversubscription slowdowns on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_persistent_warmup_reaches_target_where_constant_lr_diverges(one_thread):
    lr_target = 200.0                          # about 4x the critical lr at init (~52)
    losses, _ = _gd(*_catapult_problem(), 200, lr=lr_target)
    assert not (losses[-1] < 1e3 * losses[0]), "constant lr_target should diverge"
    assert len(losses) < 10

    model, batch = _catapult_problem()
    pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model,
                                             _mse, lr_target)
    losses, lrs = _gd(model, batch, 120, pcw=pcw)
    assert len(losses) == 120 and pcw.done and pcw.lr == lr_target
    assert lrs[0] < lr_target / 2              # starts near the critical lr ...
    assert max(lrs) == lr_target               # ... never above the target
    assert lrs[-1] == lr_target
    assert losses[-1] < 1e-2 * losses[0]       # and trains
    # searches happen only before the target is reached; their passes are all counted
    assert pcw.searches == len(pcw.history) >= 3
    assert pcw.forward_passes == sum(h["forward_passes"] for h in pcw.history)
    assert all(h["step"] < 60 for h in pcw.history)
    # warm-started re-searches: a few doublings instead of ~20 from lr_start = 1e-4
    assert pcw.forward_passes / pcw.searches < 12


def test_persistent_warmup_lr_mult_probe_and_state_dict():
    def make():
        model, batch = _catapult_problem(seed=1, width=64)
        opt = torch.optim.SGD([{"params": [model.U], "lr_mult": 0.5}, {"params": [model.V]}],
                              lr=0.0)
        return model, batch, opt, schedules.PersistentCatapultWarmup(opt, model, _mse, 150.0)

    def run(model, batch, opt, pcw, steps):
        for _ in range(steps):
            loss = _mse(model(batch[0]), batch[1])
            opt.zero_grad()
            loss.backward()
            lr = pcw.step(batch)               # no loss given: probed (counted)
            assert [g["lr"] for g in opt.param_groups] == [0.5 * lr, lr]
            opt.step()

    model, batch, opt, pcw = make()
    run(model, batch, opt, pcw, 6)
    probes = pcw.steps - 1                     # every call after the first probes the loss
    assert pcw.forward_passes == sum(h["forward_passes"] for h in pcw.history) + probes

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pcw": pcw.state_dict()},
               buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, batch2, opt2, pcw2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    pcw2.load_state_dict(ckpt["pcw"])
    assert pcw2.state_dict() == pcw.state_dict()
    run(model, batch, opt, pcw, 10)
    run(model2, batch2, opt2, pcw2, 10)
    assert pcw2.state_dict() == pcw.state_dict()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_persistent_warmup_bad_arguments():
    model, _ = _catapult_problem(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="lr_target"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 0.0)
    with pytest.raises(ValueError, match="lr_start"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, lr_start=2.0)
    with pytest.raises(TypeError, match="optimizer"):
        schedules.PersistentCatapultWarmup(model, opt, _mse, 1.0)
    with pytest.raises(KeyError, match="lr"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0).load_state_dict({})
    # progress saved under another target or delta is not silently mixed into this warmup
    saved = schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, delta=0.1).state_dict()
    for other, key in (({"lr_target": 2.0}, "lr_target"), ({"delta": 0.2}, "delta"), ({"lr_start": 1e-3}, "lr_start"),
                       ({"rtol": 0.05}, "rtol"), ({"warm_start": False}, "warm_start")):
        target = schedules.PersistentCatapultWarmup(opt, model, _mse, other.pop("lr_target", 1.0),
                                                    delta=other.pop("delta", 0.1), **other)
        with pytest.raises(ValueError, match=rf"saved with {key}="):
            target.load_state_dict(saved)
    assert {k: saved[k] for k in ("lr_start", "rtol", "warm_start")} == {"lr_start": 1e-4, "rtol": None, "warm_start": True}
    schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, delta=0.1).load_state_dict(saved)
    # the lr a state_dict sets on the groups is checked: never above the target, never negative
    for lr, error, words in ((5.0, ValueError, "above this warmup's lr_target"), (-5.0, ValueError, "must be a finite number > 0"),
                             ("x", ValueError, r"state_dict\['lr'\] must be a finite number > 0; got 'x'")):
        with pytest.raises(error, match=words):
            schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0).load_state_dict({**saved, "lr": lr})
    assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(TypeError, match="warm_start must be True or False"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, warm_start="no")
    pcw = schedules.PersistentCatapultWarmup(opt, model, _mse, 1e6)
    batch = _catapult_problem(width=8)[1]
    pcw.step(batch)
    with pytest.raises(TypeError, match="loss must be a scalar tensor or a number"):
        pcw.step(batch, loss="abc")
    with pytest.raises(ValueError, match=r"loss must be a scalar .* shape \(3,\)"):
        pcw.step(batch, loss=torch.ones(3))


class _Point(torch.nn.Module):
    def __init__(self, x):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(x, dtype=torch.float64))

    def forward(self, inputs):
        return self.x


def _quadratic(out, A):
    return 0.5 * out @ A @ out


@pytest.mark.parametrize("warm_start", [True, False])
def test_persistent_warmup_research_can_lower_the_lr(warm_start):
    # first batch: A = I (lr_c = 2); second batch: lower loss but curvature 10 (lr_c = 0.2).
    # A warm re-search starting at the old lower bound (~2) sees the loss rise at once and
    # must fall back to a search from lr_start.
    model = _Point([0.1, 1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pcw = schedules.PersistentCatapultWarmup(opt, model, _quadratic, 100.0, warm_start=warm_start)
    inputs = torch.zeros(1)
    lr = pcw.step((inputs, torch.eye(2, dtype=torch.float64)))
    assert 2.0 <= lr <= 1 + math.sqrt(1.1)
    sharp = torch.diag(torch.tensor([10.0, 0.0], dtype=torch.float64))
    lr = pcw.step((inputs, sharp))             # probe: 0.05 < 0.505 -> re-search
    assert 0.2 <= lr <= (1 + math.sqrt(1.1)) / 10
    assert pcw.searches == 2 and opt.param_groups[0]["lr"] == lr
    first, second = pcw.history
    assert pcw.forward_passes == first["forward_passes"] + second["forward_passes"] + 1
    if warm_start:      # 2 wasted passes (L0 and the rise at the warm start) before the fallback
        cold = schedules.PersistentCatapultWarmup(opt, model, _quadratic, 100.0, warm_start=False)
        cold.step((inputs, sharp))
        assert second["forward_passes"] == cold.history[0]["forward_passes"] + 2


def test_tensor_lr_is_filled_in_place_not_replaced():
    # torch.optim accepts lr as a tensor (for torch.compile / capturable steps, which keep
    # reading that tensor); the schedulers must update it in place, as torch's own ones do
    f = warmup(1.0, 4)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr_mult": 0.5}],
                          lr=torch.tensor(0.01))
    lr = opt.param_groups[0]["lr"]
    sched = attach(opt, f)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.5 * f(2))
    assert sched.get_last_lr()[0] is not lr and float(sched.get_last_lr()[0]) == float(lr)
    pcw = schedules.PersistentCatapultWarmup(opt, torch.nn.Linear(2, 1), torch.nn.MSELoss(),
                                             lr_target=1.0)
    pcw.load_state_dict({**pcw.state_dict(), "lr": 0.3})
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.15)


def _quadratic_warmup(lr_start=1 / 64):
    """``L(w) = ((2 w1 - 1)^2 + w2^2) / 2`` at ``w = 0`` (x = diag(2, 1), y = (1, 0), MSE) with a
    persistent warmup to 1.0 from ``lr_start``: ``(model, batch, pcw)``."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return model, batch, schedules.PersistentCatapultWarmup(opt, model, torch.nn.MSELoss(),
                                                            lr_target=1.0, lr_start=lr_start)


def test_persistent_warmup_searches_again_only_on_a_strictly_lower_loss():
    """Alg. 3 re-searches when L(theta_t) < L(theta*): an equal loss (a step too small to move a
    float32 loss, or no step at all) keeps the lr and spends no forward pass."""
    model, batch, pcw = _quadratic_warmup()
    lr = pcw.step(batch)
    assert pcw.loss_ref == 0.5 and pcw.searches == 1                 # L(0) = (1 + 0) / 2
    passes = pcw.forward_passes
    assert pcw.step(batch, loss=0.5) == lr                           # equal: no search
    assert pcw.step(batch) == lr                                     # probed, still 0.5
    assert pcw.searches == 1 and pcw.forward_passes == passes + 1    # only the probe
    pcw.step(batch, loss=0.25)                                       # lower: search again
    assert pcw.searches == 2


def test_persistent_warmup_moves_theta_star_and_warm_starts_from_the_last_lower():
    """L(w) = ((2 w1 - 1)^2 + w2^2) / 2 (x = diag(2, 1), y = (1, 0)): curvature 4 along the
    gradient, so lr_c = 2/4 and L(theta - lr u) = L0 exactly at lr = 0.5 (no rise), above it for
    larger lr. A re-search from a better point makes that point theta* (loss_ref = its loss), and
    with warm_start its doubling starts at the previous lower end, 0.5: trials 0.5 and 1.0 instead
    of 1/64 ... 1/2 and 1.0, five forward passes fewer than the first search."""
    model, batch, pcw = _quadratic_warmup()
    pcw.step(batch)
    first = pcw.history[0]
    assert (first["lower"], first["loss0"]) == (0.5, 0.5)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.25, 0.0]]))           # L = (2 * 0.25 - 1)^2 / 2 = 0.125
    pcw.step(batch)                                               # probed 0.125 < 0.5: search
    second = pcw.history[1]
    assert pcw.searches == 2 and pcw.loss_ref == second["loss0"] == 0.125
    assert (second["lower"], second["upper"]) == (first["lower"], first["upper"])
    assert second["forward_passes"] == first["forward_passes"] - 5
    pcw.step(batch, loss=0.3)                                     # below 0.5, above theta*'s 0.125
    assert pcw.searches == 2


def test_persistent_warmup_does_not_repeat_a_search_from_lr_start():
    """When the last search rose already at lr_start (lower = 0), the warm start would begin at
    lr_start itself: the re-search is the plain one, L0 plus one trial (2 forward passes) on
    L(w) = ((2 w1 - 1)^2 + w2^2) / 2, where every lr above 2/4 raises the loss -- not that search
    twice."""
    model, batch, pcw = _quadratic_warmup(lr_start=0.75)
    assert pcw.step(batch) == 0.75 and pcw.history[0]["lower"] == 0.0
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.25, 0.0]]))           # L = 0.125 < 0.5: re-search
    assert pcw.step(batch, loss=0.125) == 0.75
    assert pcw.searches == 2 and pcw.history[1]["forward_passes"] == 2


def test_numpy_scalars_are_numbers_for_attach_lr_mult_and_the_warmups_loss():
    # np.float32 / np.int64 (a schedule written with np.interp on float32 arrays, an lr_mult
    # from an int array, a loss read back with .numpy()) were refused as "not a number"
    import numpy as np

    ts = np.arange(5, dtype=np.float32)
    model, opt = _two_group_sgd()
    opt.param_groups[0]["lr_mult"] = np.int64(1)
    opt.param_groups[1]["lr_mult"] = np.float32(0.25)
    sched = attach(opt, lambda t: np.interp(np.float32(t), ts, ts / 10).astype(np.float32))
    for t in range(3):     # lr = t / 10 (float32's rounding of it) times each group's multiplier
        assert [g["lr"] for g in opt.param_groups] == [float(np.float32(t / 10)),
                                                       0.25 * float(np.float32(t / 10))]
        opt.step()
        sched.step()
    model, batch = _catapult_problem(width=8)
    pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model, _mse, 1.0)
    pcw.step(batch)
    loss = _mse(model(batch[0]), batch[1]).detach().numpy()[()]       # a NumPy float64 scalar
    pcw.step(batch, loss=np.float32(loss))
    assert pcw.steps == 2


def test_persistent_warmup_takes_a_numpy_float32_loss():
    # loss=np.float32(...) (a loss kept in a numpy array) was refused: "loss must be a scalar tensor
    # or a number, got np.float32(0.25)"
    import numpy as np

    model, batch, pcw = _quadratic_warmup()
    pcw.step(batch)
    assert pcw.loss_ref == 0.5 and pcw.searches == 1
    pcw.step(batch, loss=np.float32(0.5))                              # equal: no search
    assert pcw.searches == 1
    pcw.step(batch, loss=np.float32(0.25))                             # lower: search again
    assert pcw.searches == 2
    with pytest.raises(TypeError, match="loss must be a scalar tensor or a number, got True"):
        pcw.step(batch, loss=True)


def test_a_state_dict_at_the_target_or_from_before_the_settings_loads():
    # mutation pass 6: PW3 (an lr equal to lr_target refused: a finished warmup's state_dict could
    # not be loaded) and PW2 (a state_dict saved before lr_start, rtol and warm_start were carried,
    # which load_state_dict takes as it is, refused)
    model, batch = _catapult_problem(width=8)
    opt = torch.optim.SGD([{"params": [model.U], "lr_mult": 0.5}, {"params": [model.V]}], lr=0.0)
    saved = schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0).state_dict()
    done = schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0)
    done.load_state_dict({**saved, "lr": 1.0, "loss_ref": 0.5, "steps": 3, "searches": 1})
    assert done.done and [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
    assert done.step(batch) == 1.0 and done.searches == 1   # a finished warmup only sets the target
    old = {key: value for key, value in saved.items() if key not in ("lr_start", "rtol", "warm_start")}
    fresh = schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, lr_start=1e-3, warm_start=False)
    fresh.load_state_dict({**old, "lr": 0.25, "loss_ref": 0.5})
    assert (fresh.lr, fresh.lr_start, fresh.warm_start) == (0.25, 1e-3, False)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.25]


def test_a_tensor_lr_stays_the_groups_tensor_under_torch_22s_scheduler_step(monkeypatch):
    # torch 2.2's LRScheduler.step wrote `group["lr"] = lr`, replacing a tensor lr with a float
    # (a compiled or captured optimizer.step kept reading the old tensor's lr, silently); 2.13's
    # fills it in place. Emulated here with 2.2's step.
    def step_of_torch_22(self, epoch=None):
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    monkeypatch.setattr(torch.optim.lr_scheduler.LRScheduler, "step", step_of_torch_22)
    f = warmup(1.0, 4)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr_mult": 1.0, "lr": torch.tensor(0.01)},
                           {"params": [torch.nn.Parameter(torch.zeros(3))], "lr_mult": 0.3, "lr": torch.tensor(0.01)}])
    lrs = [group["lr"] for group in opt.param_groups]
    sched = attach(opt, f)
    for t in range(6):
        assert [group["lr"] for group in opt.param_groups] == lrs   # the same tensors
        # float32 fn(t) * lr_mult exactly: no factor read from the float32 rounding of the last lr
        assert [float(lr) for lr in lrs] == [float(torch.tensor(f(t) * m)) for m in (1.0, 0.3)], t
        opt.step()
        sched.step()


def test_lr_start_may_equal_lr_target_and_defaults_to_it_below_1e_4():
    """lr_start == lr_target is a warmup that starts at its target (taken); lr_start above it is
    refused; lr_start left out is min(1e-4, lr_target), so a target 5e-5 starts at 5e-5 (mutation
    pass 22b, PW10: lr_start >= lr_target refused the equal case, and with it the 5e-5 default)."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    assert schedules.PersistentCatapultWarmup(opt, model, _mse, 0.5, lr_start=0.5).lr_start == 0.5
    assert schedules.PersistentCatapultWarmup(opt, model, _mse, 5e-5).lr_start == 5e-5
    assert schedules.PersistentCatapultWarmup(opt, model, _mse, 0.5).lr_start == 1e-4
    with pytest.raises(ValueError, match=r"^lr_start \(0\.6\) must be <= lr_target \(0\.5\)$"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 0.5, lr_start=0.6)
