"""A custom ``autograd.Function`` without a ``backward`` in the forward: the loss has no gradient, so
no curvature mode measures it, and critical_lr has no step to search along. The default mode said
"torch has no second derivative of this model ... hvp='finite_difference' takes its products from
gradients alone", and finite differences then raised torch's raw NotImplementedError; so did
curvature='ggn' (at its build), critical_lr (and PersistentCatapultWarmup, which calls it), and
both on a model sharded by FSDP2; hvp='forward_over_reverse' and 'compiled' said the Function lacks
setup_context and that 'double_backprop' or 'finite_difference' measures it (neither does). Every
entry point now says what is missing."""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.schedules import PersistentCatapultWarmup
from torch_features import FSDP2


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2


class ByVjp(torch.autograd.Function):   # a vjp instead of a backward: differentiable
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def vjp(ctx, g):
        return g * 2


class Model(torch.nn.Module):
    def __init__(self, function=NoBackward):
        super().__init__()
        self.a, self.b, self.function = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1), function

    def forward(self, x):
        return self.b(torch.tanh(self.function.apply(self.a(x))))


def _batch():
    torch.manual_seed(0)
    return torch.randn(4, 2), torch.randn(4, 1)


LOSS = torch.nn.MSELoss()
SAYS = "custom autograd.Function without a backward.*so it has no gradient.*implement the Function's backward"


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


ENTRIES = {
    "sharpness": lambda m, b: catapult.sharpness(m, LOSS, b),
    "finite_difference": lambda m, b: catapult.sharpness(m, LOSS, b, hvp="finite_difference"),
    "chunks": lambda m, b: catapult.sharpness(m, LOSS, b, chunk_size=2),
    "forward_over_reverse": lambda m, b: catapult.sharpness(m, LOSS, b, hvp="forward_over_reverse"),
    "compiled": lambda m, b: catapult.sharpness(m, LOSS, b, hvp="compiled"),
    "ggn": lambda m, b: catapult.sharpness(m, LOSS, b, curvature="ggn"),
    "ggn_chunks": lambda m, b: catapult.sharpness(m, LOSS, b, curvature="ggn", chunk_size=2),
    "preconditioned": lambda m, b: catapult.preconditioned_sharpness(m, LOSS, b, torch.optim.Adam(m.parameters())),
    "top_eigenpairs": lambda m, b: catapult.top_eigenpairs(m, LOSS, b, k=2),
    "top_eigenpairs_ggn": lambda m, b: catapult.top_eigenpairs(m, LOSS, b, k=2, curvature="ggn"),
    "hessian_trace": lambda m, b: catapult.hessian_trace(m, LOSS, b),
    "spectral_density": lambda m, b: catapult.spectral_density(m, LOSS, b),
    "critical_lr": lambda m, b: catapult.critical_lr(m, LOSS, b, _sgd(m)),
    "critical_lr_adam": lambda m, b: catapult.critical_lr(m, LOSS, b, torch.optim.Adam(m.parameters())),
    "persistent_warmup": lambda m, b: PersistentCatapultWarmup(_sgd(m), m, LOSS, lr_target=1.0).step(b),
}
# what the message starts with (the mode, or the function)
WHO = {"finite_difference": "hvp='finite_difference'", "forward_over_reverse": "hvp='forward_over_reverse'",
       "compiled": "hvp='compiled'", "ggn": "curvature='ggn'", "ggn_chunks": "curvature='ggn'",
       "top_eigenpairs_ggn": "curvature='ggn'", "critical_lr": "critical_lr", "critical_lr_adam": "critical_lr",
       "persistent_warmup": "critical_lr"}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_function_without_backward_is_named_and_no_mode_is_offered(entry):
    model, batch = Model(), _batch()
    with pytest.raises(ValueError, match=SAYS) as err:
        ENTRIES[entry](model, batch)
    message = str(err.value)
    assert message.startswith(WHO.get(entry, "hvp='double_backprop'")), message
    # the Function by its class name, in every mode (the default mode's said only torch's
    # "You must implement either the backward or vjp method", which names none)
    assert "without a backward (NoBackward)" in message, message
    assert "finite_difference' takes" not in message and "measures it" not in message


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("entry", ["sharpness", "finite_difference", "ggn", "top_eigenpairs", "hessian_trace",
                                   "critical_lr", pytest.param("fsdp_sharpness", marks=FSDP2),
                                   pytest.param("fsdp_critical_lr", marks=FSDP2)])
def test_a_function_without_backward_is_named_under_distributed(entry):
    from catapult.curvature.distributed import single_process_group

    def fully_shard(m):
        from torch.distributed.fsdp import fully_shard   # torch 2.6+ (FSDP2)
        return fully_shard(m)

    calls = {
        "sharpness": lambda m, b: catapult.sharpness(m, LOSS, b, distributed=True),
        "finite_difference": lambda m, b: catapult.sharpness(m, LOSS, b, hvp="finite_difference", distributed=True),
        "ggn": lambda m, b: catapult.sharpness(m, LOSS, b, curvature="ggn", distributed=True),
        "top_eigenpairs": lambda m, b: catapult.top_eigenpairs(m, LOSS, b, k=2, distributed=True),
        "hessian_trace": lambda m, b: catapult.hessian_trace(m, LOSS, b, distributed=True),
        "critical_lr": lambda m, b: catapult.critical_lr(m, LOSS, b, _sgd(m), distributed=True),
        "fsdp_sharpness": lambda m, b: catapult.sharpness(fully_shard(m), LOSS, b, distributed=True),
        "fsdp_critical_lr": lambda m, b: (lambda s: catapult.critical_lr(s, LOSS, b, _sgd(s), distributed=True))(
            fully_shard(m)),
    }
    model, batch = Model(), _batch()
    with single_process_group(), pytest.raises(ValueError, match=SAYS) as err:
        calls[entry](model, batch)
    assert "measures it" not in str(err.value) and "without a backward (NoBackward)" in str(err.value)


def test_functions_are_listed_by_what_they_lack():
    from catapult.curvature.torch_errors import functions_without_backward

    w = torch.ones(3, requires_grad=True)
    assert functions_without_backward(NoBackward.apply(ByVjp.apply(w)).sum()) == ["NoBackward"]
    assert functions_without_backward(ByVjp.apply(w).sum()) == []


def test_a_function_with_a_vjp_is_measured():
    # over-refusal check: a vjp stands in for backward; the sharpness is the plain model's (x * 2 by hand)
    model, batch = Model(ByVjp).double(), tuple(t.double() for t in _batch())

    class Plain(torch.nn.Module):   # the same layers (parameters)
        def __init__(self):
            super().__init__()
            self.a, self.b = model.a, model.b

        def forward(self, x):
            return self.b(torch.tanh(2 * self.a(x)))

    for kwargs in ({}, {"hvp": "finite_difference"}, {"curvature": "ggn"}):
        got = catapult.sharpness(model, LOSS, batch, tol=1e-10, **kwargs)
        truth = catapult.sharpness(Plain(), LOSS, batch, tol=1e-10, **kwargs)
        assert got.value == pytest.approx(truth.value, rel=1e-8), kwargs
    assert catapult.critical_lr(model, LOSS, batch, _sgd(model)).lr == \
        catapult.critical_lr(Plain(), LOSS, batch, _sgd(model)).lr
