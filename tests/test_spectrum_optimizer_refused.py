"""The spectrum functions' ``optimizer=`` reads the next step of torch's SGD, Adam, AdamW, RAdam or
catapult's GIAdam. Any other optimizer (RMSprop, Adagrad), or no optimizer at all (the string
"adam", a list holding an Adam), was the registry's NotImplementedError ("no update rule for
RMSprop"), raised after the operator's graph had been built (and ``memory="lean"``'s sizing
forward run); ``preconditioned_sharpness`` refuses the same optimizers with a TypeError before any
work. Now the three refuse alike, naming themselves and what ``optimizer=`` takes, before any
forward; a ``maximize=True`` group is refused before any forward too."""
from __future__ import annotations

import re

import pytest
import torch

import catapult


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    batch = (torch.randn(12, 3), torch.randn(12, 2))
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    return model, torch.nn.MSELoss(), batch, forwards


CALLS = {
    "top_eigenpairs": lambda m, f, b, o: catapult.top_eigenpairs(m, f, b, k=2, optimizer=o),
    "top_eigenpairs_lean": lambda m, f, b, o: catapult.top_eigenpairs(m, f, b, k=2, optimizer=o, memory="lean"),
    "hessian_trace": lambda m, f, b, o: catapult.hessian_trace(m, f, b, matvecs=6, optimizer=o),
    "spectral_density": lambda m, f, b, o: catapult.spectral_density(m, f, b, runs=1, steps=2, optimizer=o),
}
OPTIMIZERS = {
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-3),
    "str": lambda p: "adam",
    "list": lambda p: [torch.optim.Adam(p, lr=1e-3)],
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_optimizer_without_a_step_rule_is_refused_before_any_forward(name, kind):
    model, loss_fn, batch, forwards = problem()
    optimizer = OPTIMIZERS[kind](model.parameters())
    owner = name.replace("_lean", "")
    message = (f"{owner} optimizer= supports torch.optim.SGD, Adam, AdamW, RAdam and catapult.optim.GIAdam "
               f"(the next step's pre-conditioner or per-group lrs), got {kind}")
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        CALLS[name](model, loss_fn, batch, optimizer)
    assert forwards == []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_maximizing_optimizer_is_refused_before_any_forward(name):
    model, loss_fn, batch, forwards = problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, maximize=True)
    owner = name.replace("_lean", "")   # the function refusing it, as the TypeError above names it
    with pytest.raises(ValueError, match=f"^{owner}: param group 0 has maximize=True: its step ascends loss_fn, "
                                         f"and {owner} measures the descent of loss_fn"):
        CALLS[name](model, loss_fn, batch, optimizer)
    assert forwards == []
