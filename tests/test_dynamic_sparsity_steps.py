"""MaskUpdater's step rule at its end points, read off the module docstring (RigL: 0 < t < T_end;
GMP: t_0 <= t <= T_end, on multiples of update_every), and a grown weight starting at 0."""
from __future__ import annotations

import pytest
import torch

from catapult.sparsity import MaskedLinear, MaskUpdater


def _model(density=0.5):
    layer = MaskedLinear(4, 4, density=density, generator=torch.Generator().manual_seed(0))
    if density == 1.0:
        layer.set_mask(torch.ones(4, 4, dtype=torch.bool))  # gmp prunes from an all-ones mask
    return torch.nn.Sequential(layer)


def test_rigl_updates_on_multiples_of_update_every_strictly_before_end_step():
    updater = MaskUpdater(_model(), "rigl", update_every=5, end_step=20)
    assert [t for t in range(0, 31) if updater.is_update_step(t)] == [5, 10, 15]


def test_gmp_updates_from_start_step_through_end_step():
    updater = MaskUpdater(_model(1.0), "gmp", final_density=0.5, update_every=5, start_step=10, end_step=22)
    assert [t for t in range(0, 31) if updater.is_update_step(t)] == [10, 15, 20, 22]  # and T_end itself


def test_a_grown_weight_starts_at_zero_whatever_its_pruned_entry_held():
    # a pruned entry that something moved off 0 (here by hand) is grown by RigL: it starts at 0
    layer = MaskedLinear(2, 2, generator=torch.Generator().manual_seed(0))
    layer.set_mask(torch.tensor([[True, True], [True, False]]))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [0.01, 7.0]]))  # (1, 1) is pruned but holds 7
    updater = MaskUpdater(torch.nn.Sequential(layer), "rigl", update_every=1, end_step=100, drop_fraction=1.0)
    layer.dense_grad = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    # t = 50: fraction (1/2)(1 + cos(pi/2)) = 0.5 of 3 active -> k = 1: drop (1, 0) (|0.01|), grow (1, 1)
    assert updater.step(50)
    assert layer.mask.tolist() == [[True, True], [False, True]]
    assert layer.weight.tolist() == [[1.0, 2.0], [0.0, 0.0]]


def test_the_configs_fractions_are_the_nearest_steps_not_truncated_products():
    # 0.57 * 100 is 56.99999999999999 and 0.29 * 100 is 28.999999999999996 in binary floating
    # point: 57% and 29% of 100 steps are steps 57 and 29, not the products' integer parts
    from catapult.engine.build import build_run

    config = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "train": {"steps": 100},
              "model": {"width": 8, "depth": 3, "density": 0.5,
                        "sparsity": {"method": "rigl", "update_every": 1, "end_fraction": 0.57}},
              "eval": {"sharpness_every": 0, "test_every": 0}}
    updater = build_run(config).mask_updater
    assert updater.end_step == 57
    assert [t for t in range(100) if updater.is_update_step(t)][-1] == 56   # RigL: t < T_end
    # start_fraction is gmp's (rigl reads none: refused there), which prunes on the gpt
    config = {"data": {"name": "shakespeare", "context": 4, "n_train": 8, "n_test": 4}, "train": {"steps": 100},
              "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "density": 0.5,
                        "sparsity": {"method": "gmp", "update_every": 1, "start_fraction": 0.29,
                                     "end_fraction": 0.57}},
              "loss": "cross_entropy", "eval": {"sharpness_every": 0, "test_every": 0}}
    updater = build_run(config).mask_updater
    assert (updater.end_step, updater.start_step) == (57, 29)
    assert [t for t in range(100) if updater.is_update_step(t)][0] == 29   # GMP: t_0 <= t


def _steps_that_change(updater, upto=200):
    return [t for t in range(upto) if updater.is_update_step(t)]


def test_a_schedule_in_which_no_mask_changes_is_refused_naming_the_argument():
    # end_step defaulted to 0: MaskUpdater(model, "rigl", update_every=10) never moved a mask and
    # MaskUpdater(model, "gmp", final_density=0.1, update_every=10) left the model dense; the
    # module docstring's rule (RigL: 0 < t < T_end on multiples of update_every; GMP: t_0 <= t <= T_end)
    # has no update step in any of these
    import pytest

    cases = [(dict(method="rigl", update_every=10), "needs end_step"),
             (dict(method="gmp", final_density=0.1, update_every=10), "needs end_step"),
             (dict(method="rigl", update_every=10, end_step=10), "no mask would change"),
             (dict(method="gmp", final_density=0.1, end_step=0), "prune nothing"),
             (dict(method="gmp", final_density=0.1, start_step=50, end_step=40), "prune nothing"),
             (dict(method="gmp", end_step=40), "final_density 1"),
             (dict(method="rigl", update_every=1.5, end_step=10), "^MaskUpdater update_every must be an integer in \\[1, 1000000000\\]; got 1.5$"),
             (dict(method="rigl", end_step=True), "^MaskUpdater end_step must be None or an integer in \\[0, 1000000000\\]; got True$")]
    with pytest.raises(ValueError, match="has none with a mask"):   # it updated nothing
        MaskUpdater(torch.nn.Sequential(MaskedLinear(4, 4)), "gmp", final_density=0.5, end_step=10)
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            MaskUpdater(_model(), **kwargs)
    assert _steps_that_change(MaskUpdater(_model(), "rigl", update_every=9, end_step=10)) == [9]
    assert _steps_that_change(MaskUpdater(_model(1.0), "gmp", final_density=0.5, start_step=40, end_step=40)) == [40]
    assert _steps_that_change(MaskUpdater(_model(), "static")) == []   # static takes no schedule


@pytest.mark.parametrize("method", ["rigl", "gmp"])
def test_a_non_contiguous_mask_is_updated(method):
    # the new mask was written through reshaped row blocks of a clone, which for a transposed
    # mask (set_mask(m.t())) were copies: RigL and GMP changed nothing, silently
    import numpy as np

    gen = torch.Generator().manual_seed(0)
    layer = MaskedLinear(8, 8, generator=gen)
    layer.set_mask(torch.randperm(64, generator=gen).reshape(8, 8).lt(32).t())   # 32 live, transposed
    assert not layer.mask.is_contiguous()
    mask = layer.mask.numpy().ravel().copy()
    w = layer.weight.detach().abs().numpy().ravel()
    if method == "rigl":
        updater = MaskUpdater(torch.nn.Sequential(layer), "rigl", update_every=1, end_step=100, drop_fraction=1.0)
        layer.dense_grad = torch.randn(8, 8, generator=gen)
        score = layer.dense_grad.abs().numpy().ravel()
        k = int(np.floor(0.5 * 32))            # t = 50 of 100: fraction (1/2)(1 + cos(pi/2)) = 0.5
        idx = np.flatnonzero(mask)
        expected = mask.copy()
        expected[idx[np.argsort(w[idx])[:k]]] = False
        out = np.flatnonzero(~expected)
        expected[out[np.argsort(-score[out])[:k]]] = True
    else:
        updater = MaskUpdater(torch.nn.Sequential(layer), "gmp", final_density=0.25, update_every=1, end_step=50)
        idx = np.flatnonzero(mask)
        expected = np.zeros_like(mask)
        expected[idx[np.argsort(-w[idx])[:16]]] = True   # t = T_end: the 16 largest of the 32 live
    assert updater.step(50)
    assert np.array_equal(layer.mask.numpy().ravel(), expected)
    assert torch.all(layer.weight[~layer.mask] == 0)


def test_a_rigl_update_without_a_dense_gradient_names_the_layer_and_a_frozen_weight():
    # it said only "call step() after backward()", also for a frozen weight no backward reaches
    layer = MaskedLinear(4, 4, density=0.5, generator=torch.Generator().manual_seed(0))
    layer.weight.requires_grad_(False)
    updater = MaskUpdater(torch.nn.Sequential(layer), "rigl", update_every=1, end_step=10)
    with pytest.raises(RuntimeError, match=r"'0'.*frozen: requires_grad=False"):
        updater.step(1)


def test_a_penalty_backward_before_the_loss_does_not_carry_the_last_steps_score_over():
    # a backward of a penalty on the weight alone (it bypasses the layer's forward) made .grad
    # non-zero first, so the loss's backward took .grad for a continued accumulation and added
    # the previous step's score: 4.38 off a score of size 4.29
    layer = MaskedLinear(6, 6, density=0.5, generator=torch.Generator().manual_seed(0))
    updater = MaskUpdater(torch.nn.Sequential(layer), "rigl", update_every=1, end_step=10)
    gen = torch.Generator().manual_seed(1)
    x1, x2, x3 = (torch.randn(3, 6, generator=gen) for _ in range(3))

    def truth(*xs):   # d loss / d(W ⊙ M), W ⊙ M a leaf
        leaf = (layer.weight * layer.mask).detach().requires_grad_()
        loss = sum((x @ leaf.T + layer.bias.detach()).pow(2).sum() for x in xs)
        return torch.autograd.grad(loss, leaf)[0]

    layer.weight.grad = None
    layer(x1).pow(2).sum().backward()
    updater.step(0)                                         # step 0's update: no mask change
    layer.weight.grad = None                                # step 1: penalty first, then the loss
    (1e-3 * layer.weight.pow(2).sum()).backward()
    layer(x2).pow(2).sum().backward()
    assert torch.allclose(layer.dense_grad, truth(x2), atol=1e-5)
    layer(x3).pow(2).sum().backward()                       # a second micro-batch still adds up
    assert torch.allclose(layer.dense_grad, truth(x2, x3), atol=1e-5)


def test_numpy_integers_are_steps_like_python_integers():
    # 1358537's integer check (isinstance int) refused them: "update_every must be an integer >= 1;
    # got np.int64(5)", where the public API takes NumPy numbers as counts elsewhere
    import numpy as np

    rigl = MaskUpdater(_model(), "rigl", update_every=np.int64(5), end_step=np.int32(20))
    assert [t for t in range(0, 31) if rigl.is_update_step(t)] == [5, 10, 15]
    gmp = MaskUpdater(_model(1.0), "gmp", final_density=0.5, update_every=np.int64(5),
                      start_step=np.int64(10), end_step=np.int64(22))
    assert [t for t in range(0, 31) if gmp.is_update_step(t)] == [10, 15, 20, 22]
    with pytest.raises(ValueError, match="^MaskUpdater update_every must be an integer in \\[1, 1000000000\\]; got 1.5$"):
        MaskUpdater(_model(), "rigl", update_every=1.5, end_step=20)
    with pytest.raises(ValueError, match="^MaskUpdater end_step must be None or an integer in \\[0, 1000000000\\]; got True$"):
        MaskUpdater(_model(), "rigl", update_every=1, end_step=True)


def test_numpy_reals_are_fractions_and_densities_like_python_floats():
    # rigl_update(fraction=np.float32(0.5)) was refused ('must be a number in [0, 1]; got 0.5'), and
    # MaskUpdater's final_density / drop_fraction as np.float32 too (isinstance int, float)
    import numpy as np

    from catapult.sparsity import rigl_update

    weight = torch.tensor([1.0, 0.1, 3.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, True, True, False, False, False])
    grad = torch.tensor([0.0, 0.0, 0.0, 0.2, 9.0, 1.0])
    # floor(0.5 * 3) = 1: drop the active entry of least |w| (index 1), grow the largest |grad| (index 4)
    assert rigl_update(weight, mask, grad, np.float32(0.5)).tolist() == [True, False, True, False, True, False]
    updater = MaskUpdater(_model(1.0), "gmp", final_density=np.float32(0.5), drop_fraction=np.float32(0.25),
                          update_every=5, end_step=20)
    assert (updater.final_density, updater.drop_fraction) == (0.5, 0.25)
    with pytest.raises(ValueError, match="must be a finite number in \\[0, 1\\]"):
        rigl_update(weight, mask, grad, np.float64(1.5))
