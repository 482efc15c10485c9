"""An optimizer subclass that overrides ``step`` is not its parent's update: refused by every
public function that reads the parent's rule (it silently got the parent's thresholds and
critical-lr direction). A subclass that only adds methods keeps working."""
import pytest
import torch

import catapult
from catapult.optim import GIAdam, registry


class SGDW(torch.optim.SGD):
    """SGD with decoupled weight decay: theta <- (1 - lr wd) theta - lr g (not SGD's coupled L2)."""

    def __init__(self, params, lr, wd):
        super().__init__(params, lr=lr)
        for group in self.param_groups:
            group["wd"] = wd

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(1 - group["lr"] * group["wd"])
        return super().step(closure)


class Mid(torch.optim.Adam):
    def step(self, closure=None):
        return super().step(closure)


class Leaf(Mid):          # inherits Mid's step: still not Adam's
    pass


class Counted(torch.optim.SGD):      # only adds a method: SGD's update
    def calls(self):
        return 0


class CountedGI(GIAdam):
    pass


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    return model, torch.nn.MSELoss(), batch


def test_spec_for_refuses_an_overridden_step_and_keeps_a_plain_subclass():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(TypeError, match=r"SGDW overrides the step of torch\.optim\.SGD.*catapult_optimizer"):
        registry.spec_for(SGDW(w, lr=0.1, wd=0.5))
    # the inherited override is named where it is (Leaf built first: torch hooks Leaf.step)
    with pytest.raises(TypeError, match=r"Leaf overrides the step of torch\.optim\.Adam \(in Mid\)"):
        registry.spec_for(Leaf(w))
    with pytest.raises(TypeError, match=r"Mid overrides the step of torch\.optim\.Adam"):
        registry.rule_for(Mid(w))
    # a subclass that only adds methods: its parent's entry, before and after torch hooks its step
    for _ in range(2):
        assert registry.spec_for(Counted(w, lr=0.1)).name == "sgd"
        assert registry.spec_for(CountedGI(w)).name == "gi-adam"


def test_declared_step_is_taken_and_a_wrong_declaration_refused():
    w = [torch.nn.Parameter(torch.zeros(2))]

    class Logged(SGDW):
        catapult_optimizer = "sgd"          # declares SGD's update (here wd=0: it is)

    class Undeclared(Logged):               # overrides again below the declaration
        def step(self, closure=None):
            return super().step(closure)

    class Wrong(torch.optim.SGD):
        catapult_optimizer = "adam"         # not a subclass of Adam

    assert registry.spec_for(Logged(w, lr=0.1, wd=0.0)).name == "sgd"
    with pytest.raises(TypeError, match=r"Undeclared overrides the step of Logged"):
        registry.spec_for(Undeclared(w, lr=0.1, wd=0.0))
    with pytest.raises(TypeError, match=r"Wrong\.catapult_optimizer = 'adam' names no entry"):
        registry.spec_for(Wrong(w, lr=0.1))


def test_public_functions_refuse_an_overridden_step_before_any_work():
    model, loss_fn, batch = _problem()
    # truth: SGDW's step on this loss is GD with decoupled decay, whose threshold is not SGD's
    # coupled 2 / lr - wd = 19.5; SGD itself (a plain subclass) keeps 2 / lr = 20
    assert catapult.instability_threshold(Counted(model.parameters(), lr=0.1)) == 20.0
    opt = SGDW(model.parameters(), lr=0.1, wd=0.5)
    with pytest.raises(TypeError, match="instability_threshold: SGDW overrides"):
        catapult.instability_threshold(opt)
    with pytest.raises(TypeError, match="SGDW overrides"):
        catapult.critical_lr(model, loss_fn, batch, opt, lr_start=1 / 64)
    with pytest.raises(TypeError, match="SGDW overrides"):
        catapult.SharpnessTracker(model, loss_fn, opt)
    adam = Mid(model.parameters())
    with pytest.raises(TypeError, match="Mid overrides"):
        catapult.preconditioned_sharpness(model, loss_fn, batch, adam)
    assert adam.state == {} and float(model.weight.detach().abs().sum()) == 0.0 and model.weight.grad is None
    # a plain subclass measures what SGD measures: L(lr) = (4 lr - 1)^2 / 2 crosses L0 at lr = 1/2
    result = catapult.critical_lr(model, loss_fn, batch, Counted(model.parameters(), lr=0.1), lr_start=1 / 64,
                                  rtol=1e-3)
    assert result.lower <= 0.5 <= result.lr <= 0.5 * (1 + 1e-3)


def test_an_adamw_subclass_is_judged_against_adamw_not_adam():
    # (mutation pass 23) AdamW subclasses Adam in newer torch: the check takes the nearest table
    # class, so a plain AdamW subclass is 'adamw' and an overridden step names AdamW's
    class PlainW(torch.optim.AdamW):
        pass

    class StepW(torch.optim.AdamW):
        def step(self, closure=None):
            return super().step(closure)

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert registry.spec_for(PlainW(w)).name == "adamw"
    with pytest.raises(TypeError, match=r"StepW overrides the step of torch\.optim\.AdamW: .* are AdamW's update"):
        registry.spec_for(StepW(w))


@pytest.mark.skipif(not issubclass(torch.optim.AdamW, torch.optim.Adam), reason="AdamW subclasses Adam on newer torch only")
def test_a_declared_entry_is_the_spec_even_where_the_class_is_another_table_classs():
    # (mutation pass 23) an AdamW subclass declaring "adam" (its step Adam's update, coupled L2) is
    # the adam entry, not the adamw of the table class it subclasses
    class CoupledW(torch.optim.AdamW):
        catapult_optimizer = "adam"

        def step(self, closure=None):
            return super().step(closure)

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert registry.spec_for(CoupledW(w)).name == "adam"
