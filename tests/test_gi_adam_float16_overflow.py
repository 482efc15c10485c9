"""GIAdam on float16 parameters refuses a first gradient whose v_0 overflows float16, before any
state is made. v_0 = g^2 is inf for |g| > 255.9 (v0="random": once the norm of g^2 passes 65504),
and those entries never moved again (m / sqrt(inf) = 0): after 3 steps of g = [300, 1, 1000] at
lr 0.1 the weights were [0, -0.0131, 0] (torch AdamW: -0.3 each, its (1 - b2) g^2 fits). Truth: the
float16 range (torch.finfo) and, where v_0 fits, the closed form of the first step,
-lr sqrt(1 - b2) sign(g)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from catapult.optim import GIAdam


def test_a_first_v0_beyond_float16_is_refused_before_any_state():
    # S: it stepped, and the entries with |g| > 255.9 were frozen for good
    fine, big = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    opt = GIAdam([fine, big], lr=0.1)
    fine.grad = torch.tensor([3.0, -2.0], dtype=torch.float16)
    big.grad = torch.tensor([300.0, 1.0, -1000.0], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"parameter 1 \(torch.float16, shape \(3,\)\).* overflows torch.float16 "
                                         r"\(max 65504; the largest \|g\| is 1000\)"):
        opt.step()
    assert len(opt.state) == 0 and not fine.any() and not big.any()
    # where v_0 fits (|g| <= 255.9, 255.9^2 < 65504) the first step is GI-Adam's: -lr sqrt(1 - b2) sign(g)
    big.grad = torch.tensor([200.0, 1.0, -255.0], dtype=torch.float16)
    opt.step()
    want = -0.1 * math.sqrt(1 - 0.999)
    for p, g in ((fine, fine.grad), (big, big.grad)):
        assert torch.allclose(p.double(), want * torch.sign(g.double()), rtol=2e-3, atol=0)  # float16 roundings


def test_random_v0_whose_norm_overflows_is_refused_and_non_finite_gradients_are_left_alone():
    # every g^2 = 1600 fits, but the norm of g^2 over 4096 entries, 102400, does not: v_0 was inf everywhere
    w = torch.nn.Parameter(torch.zeros(4096, dtype=torch.float16))
    opt = GIAdam([w], lr=0.1, v0="random")
    w.grad = torch.full((4096,), 40.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"parameter 0 .*v0='random'"):
        opt.step()
    assert len(opt.state) == 0
    w.grad = torch.full((4096,), 10.0, dtype=torch.float16)   # norm 6400 fits
    opt.step()
    assert bool(torch.isfinite(opt.state[w]["exp_avg_sq"]).all()) and bool((w < 0).all())
    # a gradient that is not finite itself diverges as it would anyway (NaN / inf in the weights)
    v = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    opt = GIAdam([v], lr=0.1)
    v.grad = torch.tensor([math.inf, 1.0], dtype=torch.float16)
    opt.step()
    assert not bool(torch.isfinite(v).all())


def test_start_entries_refuses_a_v0_beyond_float16_before_touching_the_state():
    # S: dynamic sparsity's restart of grown entries wrote v = g^2 = inf for |g| > 255.9 (float16):
    # those weights never moved again (m / sqrt(inf) = 0)
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    opt = GIAdam([w], lr=0.1)
    w.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[w].items()}
    where = torch.tensor([False, True, True])
    for grad in (torch.tensor([0.0, 300.0, 1.0], dtype=torch.float16),   # 300^2 = 90000 > 65504
                 torch.tensor([0.0, 1e5, 1.0])):                          # a float32 grad beyond float16 itself
        with pytest.raises(ValueError, match=r"start_entries_: parameter 0, 2 restarted entries \(torch.float16, "
                                             r"shape \(3,\)\).* overflows torch.float16 \(max 65504; the largest "
                                             r"\|g\| is (300|100000)\)"):
            opt.start_entries_(w, where, grad)
        assert all(torch.equal(opt.state[w][k], v) for k, v in before.items())
    # where v_0 fits (255^2 = 65025 <= 65504; float16 holds 65024, its spacing 32 there): m = 0 and v = g^2
    opt.start_entries_(w, where, torch.tensor([0.0, 255.0, -4.0], dtype=torch.float16))
    v = opt.state[w]["exp_avg_sq"]
    assert float(v[1]) == 65024.0 and float(v[2]) == 16.0 and torch.equal(v[0], before["exp_avg_sq"][0])
    assert float(opt.state[w]["exp_avg"][1]) == 0.0 and float(opt.state[w]["exp_avg"][2]) == 0.0


@pytest.mark.parametrize("where, grad", [(torch.tensor([False, True, True]), torch.tensor([0.0, 300.0, 1.0])),
                                         (torch.tensor([True]), torch.tensor([0.0, 1.0, 1.0]))],
                         ids=["v0_overflow", "where_shape"])
def test_reset_state_leaves_the_state_as_it_was_when_start_entries_refuses(where, grad):
    # the refusal came after reset_state_ had zeroed m and v at `where` (a where of shape (1,) broadcast:
    # every entry), so a caught error left those entries at Adam's zero start
    from catapult.sparsity import reset_state_
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    opt = GIAdam([w], lr=0.1)
    w.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[w].items()}
    assert bool((before["exp_avg"] != 0).all()) and bool((before["exp_avg_sq"] != 0).all())
    with pytest.raises(ValueError, match=r"(overflows torch.float16|where \(1,\).* must have the parameter's shape)"):
        reset_state_(opt, w, where, grad.to(torch.float16))
    assert opt.state[w].keys() == before.keys()
    for key, value in before.items():   # bit-equal: the same bytes
        assert torch.equal(opt.state[w][key].view(torch.int16 if value.dtype == torch.float16 else value.dtype),
                           value.view(torch.int16 if value.dtype == torch.float16 else value.dtype)), key


def test_a_rigl_update_that_gi_adam_refuses_changes_no_mask_weight_or_state():
    # the refusal (a grown entry's v_0 = 300^2 beyond float16) came from reset_state_ after the masks had
    # changed and the grown weights were zeroed (the first layer's update done whole, the second's mask,
    # weights and dropped state): a caught error left the model half updated
    from catapult.sparsity import MaskUpdater, MaskedLinear

    gen = torch.Generator().manual_seed(0)
    a = MaskedLinear(8, 8, density=0.25, generator=gen)
    b = MaskedLinear(8, 8, density=0.25, generator=gen)
    net = torch.nn.Sequential(a, torch.nn.Tanh(), b).half()
    updater = MaskUpdater(net, "rigl", update_every=1, end_step=10, drop_fraction=0.5)
    opt = GIAdam(net.parameters(), lr=0.01)
    net(torch.randn(4, 8, generator=gen).half()).pow(2).sum().backward()
    opt.step()
    scores = []
    for layer, big in ((a, 1.0), (b, 300.0)):   # |g| > 255.9: g^2 overflows float16 (max 65504)
        score = torch.full((8, 8), 0.5, dtype=torch.float16)
        score[~layer.mask] = torch.linspace(0.01, 0.02, int((~layer.mask).sum())).half()
        score[torch.nonzero(~layer.mask)[0].unbind()] = big   # the first inactive entry grows first
        layer.dense_grad = score
        scores.append(score)

    def snapshot():
        bits = lambda t: t.detach().clone().view(torch.int16) if t.dtype == torch.float16 else t.detach().clone()
        return ([bits(m.mask) for m in (a, b)] + [bits(p) for p in net.parameters()]
                + [bits(v) for p in net.parameters() for v in opt.state[p].values()])

    before = snapshot()
    with pytest.raises(ValueError, match=r"start_entries_: parameter 2, \d+ restarted entries \(torch.float16, "
                                         r"shape \(8, 8\)\).* overflows torch.float16.*the largest \|g\| is 300\)"):
        updater.step(1, opt)
    after = snapshot()
    assert len(after) == len(before) and all(torch.equal(x, y) for x, y in zip(before, after))
    # with a grow score that fits, the same update goes through: both masks change, grown v = g^2
    scores[1][scores[1] == 300.0] = 2.0
    masks = [a.mask.clone(), b.mask.clone()]
    assert updater.step(1, opt)
    for layer, mask, score in zip((a, b), masks, scores):
        grown = layer.mask & ~mask
        assert bool(grown.any()) and torch.equal(layer.weight.detach()[grown], torch.zeros(int(grown.sum())).half())
        assert torch.equal(opt.state[layer.weight]["exp_avg_sq"][grown], score[grown] ** 2)


def test_a_rigl_update_checks_only_the_entries_it_grows():
    # (mutation pass 23) a kept entry whose dense gradient's square overflows float16 (300^2) is no
    # restarted entry: its state stays, so the update goes through; only grown entries start from grad
    from catapult.sparsity import MaskUpdater, MaskedLinear

    gen = torch.Generator().manual_seed(0)
    a = MaskedLinear(8, 8, density=0.25, generator=gen)
    net = torch.nn.Sequential(a).half()
    updater = MaskUpdater(net, "rigl", update_every=1, end_step=10, drop_fraction=0.5)
    opt = GIAdam(net.parameters(), lr=0.01)
    net(torch.randn(4, 8, generator=gen).half()).pow(2).sum().backward()
    opt.step()
    score = torch.full((8, 8), 0.01, dtype=torch.float16)          # the dropped half does not grow back
    score[~a.mask] = torch.linspace(0.5, 0.6, int((~a.mask).sum())).half()
    largest = torch.where(a.mask, a.weight.detach().abs().float(), torch.tensor(-1.0)).argmax()
    score.view(-1)[largest] = 300.0            # the active entry of largest |w|: RigL keeps it
    a.dense_grad = score
    before = a.mask.clone()
    assert updater.step(1, opt)
    assert bool(a.mask.view(-1)[largest]) and not torch.equal(a.mask, before)


def test_a_saved_v_beyond_float16_is_refused_when_it_loads_into_float16_parameters():
    # S: torch's loader cast the float32 v = 300^2 = 90000 to float16, inf, and that entry never moved
    # again (m / sqrt(inf) = 0) while the others trained. Truth: the float16 range (torch.finfo: 65504)
    wide = torch.nn.Parameter(torch.zeros(3))
    source = GIAdam([wide], lr=0.1)
    wide.grad = torch.tensor([300.0, 1.0, -2.0])
    source.step()
    assert float(source.state[wide]["exp_avg_sq"].max()) > torch.finfo(torch.float16).max
    half = torch.nn.Parameter(wide.detach().to(torch.float16))
    target = GIAdam([half], lr=0.1)
    with pytest.raises(ValueError, match=r"state_dict param group 0: exp_avg_sq of parameter 0 holds values up to "
                                         r"90000, beyond torch.float16 \(max 65504\)"):
        target.load_state_dict(source.state_dict())
    assert not target.state
    fits = GIAdam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))], lr=0.1)
    wide.grad = torch.tensor([0.5, 1.0, -2.0])
    other = GIAdam([wide], lr=0.1)
    other.step()
    fits.load_state_dict(other.state_dict())
    assert fits.state[fits.param_groups[0]["params"][0]]["exp_avg_sq"].dtype == torch.float16


def test_a_step_count_beyond_float16_loads_into_float16_parameters_and_continues_as_torch_adamw():
    # the load's range check is of the moments torch's loader casts to the parameter's dtype; the step
    # count it keeps as saved (a float32 tensor), so a run past step 65504 loads. Truth: torch AdamW
    # continuing the same state on the same float16 parameter, bit-equal
    torch.manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(3).to(torch.float16))
    adamw = torch.optim.AdamW([ref], lr=0.1, foreach=False)
    ref.grad = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float16)
    adamw.step()
    adamw.state[ref]["step"].fill_(70000.0)
    half = torch.nn.Parameter(ref.detach().clone())
    opt = GIAdam([half], lr=0.1)
    saved = copy.deepcopy(adamw.state_dict())   # (torch's loader shares tensors of one dtype)
    for group in saved["param_groups"]:   # torch 2.2's AdamW writes no flag (GIAdam refuses the decay unsaid)
        group.setdefault("decoupled_weight_decay", True)
    opt.load_state_dict(saved)
    half.grad = torch.tensor([0.25, 1.0, -0.5], dtype=torch.float16)
    ref.grad = half.grad.clone()
    opt.step()
    adamw.step()
    assert torch.equal(half, ref)
    assert float(opt.state[half]["step"]) == float(adamw.state[ref]["step"]) == 70001.0


def test_a_saved_v_beyond_bfloat16_is_refused_when_it_loads_into_bfloat16_parameters():
    # bfloat16's range ends just below float32's (torch.finfo: 3.3895e38 < 3.4028e38): a float32 v of
    # 3.4e38 is inf once cast to bfloat16, as the float16 case above
    big = torch.tensor([3.4e38, 1.0, 1.0])
    assert bool(torch.isfinite(big).all()) and bool(torch.isinf(big.to(torch.bfloat16))[0])
    wide = torch.nn.Parameter(torch.zeros(3))
    source = GIAdam([wide], lr=0.1)
    wide.grad = torch.ones(3)
    source.step()
    saved = source.state_dict()
    saved["state"][0] = dict(saved["state"][0], exp_avg_sq=big)
    target = GIAdam([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avg_sq of parameter 0 holds values up to 3.4e\+38, beyond "
                                         r"torch.bfloat16 \(max 3.38953e\+38\)"):
        target.load_state_dict(saved)
    assert not target.state


def test_a_saved_state_already_not_finite_loads_into_float16_parameters_as_into_float32_ones():
    # the range check names values the cast to float16 makes infinite; a state that is not finite as
    # saved (a diverged run: nan, inf) is not beyond float16's range, and loads as into float32 parameters
    # (as torch's own loader takes it). Truth: the saved values, cast by torch
    wide = torch.nn.Parameter(torch.zeros(3))
    source = GIAdam([wide], lr=0.1)
    wide.grad = torch.ones(3)
    source.step()
    saved = source.state_dict()
    saved["state"][0] = dict(saved["state"][0], exp_avg_sq=torch.tensor([math.nan, math.inf, 1.0]))
    for dtype in (torch.float32, torch.float16):
        target = GIAdam([torch.nn.Parameter(torch.zeros(3, dtype=dtype))], lr=0.1)
        target.load_state_dict(saved)
        v = target.state[target.param_groups[0]["params"][0]]["exp_avg_sq"]
        assert v.dtype == dtype and bool(v[0].isnan()) and float(v[1]) == math.inf and float(v[2]) == 1.0
