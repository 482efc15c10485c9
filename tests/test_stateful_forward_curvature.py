"""A model that carries a state to its next forward in a plain attribute (truncated backprop through
time: ``self.h = h.detach()``). Every forward of a measurement moved it on, so the products saw another
state each: the Gauss-Newton sharpness came out 5.16893 for 5.17101, converged; forward over reverse
(and hvp='compiled') raised torch's internal assert on the escaped state; finite differences read the
moving state as a kink; double backprop measured right but left the state one batch on. The operators
now put such an attribute back after every forward: every mode measures the Hessian at the state the
model had, and the model keeps it. A state written in place cannot be put back and is refused."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_ggn, dense_hessian

import catapult


class Carries(nn.Module):
    def __init__(self, in_place: bool = False):
        super().__init__()
        self.rnn, self.out = nn.RNN(3, 6, batch_first=True), nn.Linear(6, 2)
        self.h, self.in_place = torch.zeros(1, 4, 6), in_place

    def forward(self, x):
        out, h = self.rnn(x, self.h)
        if self.in_place:
            self.h.copy_(h.detach())
        else:
            self.h = h.detach()   # the state the next batch starts from
        return self.out(out[:, -1])


class AtState(nn.Module):
    """The same function with the state fixed (the truth's model)."""

    def __init__(self, model, state):
        super().__init__()
        self.rnn, self.out, self.state = model.rnn, model.out, state

    def forward(self, x):
        return self.out(self.rnn(x, self.state)[0][:, -1])


class Memory(nn.Module):
    """A state that does not depend on the batch's size (a running context vector): micro-batches and
    shards run it as they run the whole batch."""

    def __init__(self):
        super().__init__()
        self.inp, self.rec, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.h = torch.zeros(6)

    def forward(self, x):
        z = torch.tanh(self.inp(x) + self.rec(self.h))
        self.h = z.mean(0).detach()
        return self.out(z)


class MemoryAt(nn.Module):
    """Memory with the state fixed (the truth's model)."""

    def __init__(self, model, state):
        super().__init__()
        self.inp, self.rec, self.out, self.state = model.inp, model.rec, model.out, state

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x) + self.rec(self.state)))


def memory_problem(n: int = 8):
    torch.manual_seed(0)
    model = Memory().double()
    model.h = model.h.double()
    batch = (torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64))
    with torch.no_grad():
        model(batch[0])   # a batch trained before: a state that is not zero
    return model, batch


def _problem(in_place: bool = False):
    torch.manual_seed(0)
    model = Carries(in_place).double()
    model.h = model.h.double()
    batch = (torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    with torch.no_grad():
        model(batch[0])   # a batch trained before: a state that is not zero
    return model, batch


@pytest.mark.parametrize("kwargs", [{"hvp": "double_backprop"}, {"hvp": "forward_over_reverse"},
                                    {"hvp": "finite_difference"}, {"curvature": "ggn"}, {"hvp": "compiled"}])
def test_every_mode_measures_at_the_state_the_model_had_and_keeps_it(kwargs):
    model, batch = _problem()
    state = model.h
    fixed = AtState(copy.deepcopy(model), state.clone())
    matrix = (dense_ggn(fixed, nn.MSELoss(), batch) if "curvature" in kwargs
              else dense_hessian(fixed, nn.MSELoss(), batch))
    truth = np.linalg.eigvalsh(np.asarray(matrix))[-1]
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9, **kwargs)
    assert estimate.value == pytest.approx(truth, rel=1e-7)
    assert model.h is state


def test_a_state_written_in_place_is_refused():
    model, batch = _problem(in_place=True)
    with pytest.raises(ValueError, match="writes its attribute h in place"):
        catapult.sharpness(model, nn.MSELoss(), batch)


def test_a_state_set_lazily_over_a_none_is_put_back_to_none():
    class Lazy(Carries):
        def __init__(self):
            super().__init__()
            self.h = None

        def forward(self, x):
            if self.h is None:
                self.h = torch.zeros(1, x.shape[0], 6, dtype=x.dtype)
            return super().forward(x)

    torch.manual_seed(0)
    model = Lazy().double()
    batch = (torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    fixed = AtState(copy.deepcopy(model), torch.zeros(1, 4, 6, dtype=torch.float64))
    truth = np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(), batch).numpy())[-1]
    assert catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9).value == pytest.approx(truth, rel=1e-7)
    assert model.h is None
    model(batch[0])   # the model runs as before


def test_critical_lr_searches_at_the_state_the_model_had_and_keeps_it():
    # every trial saw the state moved on by the one before: 1.5528 for the 1.5648 of the fixed state
    model, batch = _problem()
    state = model.h
    fixed = AtState(copy.deepcopy(model), state.clone())
    truth = catapult.critical_lr(fixed, nn.MSELoss(), batch, torch.optim.SGD(fixed.parameters(), lr=0.1), rtol=1e-3)
    found = catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1), rtol=1e-3)
    assert (found.lower, found.upper) == (truth.lower, truth.upper) and model.h is state


def test_probe_loss_and_the_persistent_warmups_probes_keep_the_state():
    # probe_loss ran its forward on the model as it is: the loss was right, but the model was left one
    # batch on, so PersistentCatapultWarmup's probe moved a training loop's state at every step
    from catapult.critical_lr import probe_loss
    from catapult.schedules import PersistentCatapultWarmup

    model, batch = _problem()
    state = model.h
    fixed = AtState(copy.deepcopy(model), state.clone())
    assert probe_loss(model, nn.MSELoss(), batch) == float(nn.MSELoss()(fixed(batch[0]), batch[1]))
    assert model.h is state
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = PersistentCatapultWarmup(opt, model, nn.MSELoss(), lr_target=100.0)
    for _ in range(3):   # a search, then probes of the loss (no loss passed)
        warmup.step(batch)
    assert warmup.forward_passes > warmup.history[0]["forward_passes"] and model.h is state


def test_memory_lean_measures_at_the_state_the_model_had_and_keeps_it():
    # lean's sizing forward (lean.activation_bytes) moved the state before the operator saw it:
    # a sharpness at the state one batch on, and the model left there
    # (3.7378 for the dense 3.6871 here)
    model, batch = memory_problem()
    state = model.h
    fixed = MemoryAt(copy.deepcopy(model), state.clone())
    truth = np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(), batch).numpy())[-1]
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9, memory="lean")
    assert estimate.value == pytest.approx(truth, rel=1e-7)
    assert model.h is state


@pytest.mark.parametrize("kwargs, named", [({"chunk_size": 2}, r"chunk_size: .* use chunk_size=None"),
                                           ({"memory": "lean"}, r"memory='lean' \(micro-batches of 1\): .* use "
                                                                r"memory='fast'")])
def test_micro_batches_of_a_model_whose_state_is_shaped_by_the_batch_are_refused_by_name(kwargs, named,
                                                                                        lean_chunks_small_batches):
    # an RNN's state (1, 4, 6) cannot run on a micro-batch: torch's raw 'Expected hidden size (1, 2, 6),
    # got [1, 4, 6]', which names no option; now the option that split the batch, and the way out
    # (lean by its relative rule: 4 samples of kilobytes would be one chunk under its 1 MiB floor)
    model, batch = _problem()
    with pytest.raises(ValueError, match=named) as err:
        catapult.sharpness(model, nn.MSELoss(), batch, **kwargs)
    assert "Expected hidden size" in str(err.value) and "state shaped by the batch" in str(err.value)


def test_distributed_on_a_batch_shaped_state_whose_outputs_have_no_sample_rows_is_refused():
    # the shard's halves cannot run such a model, and its output (time first) cannot be halved
    # instead: a mean taken for a sum loss would halve its curvature on 2 ranks
    from catapult.curvature.distributed import single_process_group

    class TimeFirst(Carries):
        def forward(self, x):
            out, h = self.rnn(x, self.h)
            self.h = h.detach()
            return self.out(out).transpose(0, 1)   # (time, samples, 2)

    torch.manual_seed(0)
    model = TimeFirst().double()
    model.h = model.h.double()
    batch = (torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64))

    def loss_fn(out, y):
        return nn.functional.mse_loss(out.transpose(0, 1), y, reduction="sum")

    state = model.h
    with single_process_group(), pytest.raises(ValueError, match="no sample rows .* return them with the samples"):
        catapult.sharpness(model, loss_fn, batch, distributed=True)
    assert model.h is state


class CarriedBelow(nn.Module):
    """:class:`Carries` with its state held by a child module (an RNN block inside a larger model)."""

    def __init__(self):
        super().__init__()
        self.block = Carries()

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("kwargs", [{"hvp": "double_backprop"}, {"curvature": "ggn"}])
def test_a_state_carried_by_a_submodule_is_put_back_too(kwargs):
    torch.manual_seed(0)
    model = CarriedBelow().double()
    model.block.h = model.block.h.double()
    batch = (torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    with torch.no_grad():
        model(batch[0])
    state = model.block.h
    fixed = AtState(copy.deepcopy(model.block), state.clone())
    matrix = (dense_ggn(fixed, nn.MSELoss(), batch) if "curvature" in kwargs
              else dense_hessian(fixed, nn.MSELoss(), batch))
    truth = np.linalg.eigvalsh(np.asarray(matrix))[-1]
    estimate = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9, **kwargs)
    assert estimate.value == pytest.approx(truth, rel=1e-7)
    assert model.block.h is state


def test_a_state_the_forward_creates_is_taken_away_again():
    # no attribute before the call (the forward makes it on first use): the model is left without it
    class Creates(Carries):
        def __init__(self):
            super().__init__()
            del self.h

        def forward(self, x):
            if not hasattr(self, "h"):
                self.h = torch.zeros(1, x.shape[0], 6, dtype=x.dtype)
            return super().forward(x)

    torch.manual_seed(0)
    model = Creates().double()
    batch = (torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    fixed = AtState(copy.deepcopy(model), torch.zeros(1, 4, 6, dtype=torch.float64))
    truth = np.linalg.eigvalsh(dense_hessian(fixed, nn.MSELoss(), batch).numpy())[-1]
    for hvp in ("double_backprop", "forward_over_reverse"):
        assert catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9, hvp=hvp).value == pytest.approx(truth, rel=1e-7)
        assert "h" not in vars(model)
