"""Wrong arguments to the Python API are named where they are passed: a batch that is not an
``(inputs, targets)`` pair, a model that is not a module, the coordinate check's sizes and
seeds, and a GI-Adam state saved for parameters of other shapes. Each gave an error from deep
inside (``too many values to unpack``, ``'generator' object has no attribute 'modules'``) or
a silent wrong run (``seeds="01"`` ran seeds 0 and 1).

The curvature functions, ``instability_threshold`` and ``attach`` (an audit of the API with
awkward input): an optimizer holding none of the model's parameters gave a sharpness of exactly
0; NumPy integers were refused as counts; ``max_basis``, ``coarse``, ``sigma`` and ``init`` of
the wrong kind failed inside or were taken; an ``lr=inf`` threshold was 0; the functions failed
inside ``torch.inference_mode()`` with a wrong diagnosis."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn
from dense_curvature import dense_adam_preconditioned, dense_hessian

import catapult
from catapult.coord_check import coord_check
from catapult.models import MLP
from catapult.optim import GIAdam
from catapult.scaled_layers import autocast_enabled

X, Y = torch.randn(8, 3), torch.randn(8, 2)
MSE = nn.MSELoss()


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("batch, words", [
    (X, r"batch must be a pair \(inputs, targets\); got a tensor of shape \(8, 3\)"),
    ((X, Y, Y), r"batch must be a pair .*; got a tuple of 3 items"),
    ({"x": X, "y": Y}, r"batch must be a pair .*; got a dict of 2 items"),
    ((X[:0], Y[:0]), "batch is empty: its inputs have 0 samples"),
])
def test_a_batch_that_is_not_a_pair_is_named(batch, words):
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="critical_lr: " + words):
        catapult.critical_lr(model, MSE, batch, _sgd(model))
    pcw = catapult.schedules.PersistentCatapultWarmup(_sgd(model), model, MSE, 1.0)
    with pytest.raises(ValueError, match="PersistentCatapultWarmup.step: " + words):
        pcw.step(batch)
    with pytest.raises(ValueError, match="coord_check: " + words):
        coord_check(lambda w: MLP(3, 2, width=int(w), depth=2), [8], batch=batch, steps=1, seeds=[0])


def test_a_model_that_is_not_a_module_is_named():
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"critical_lr: model must be a torch.nn.Module \(the model itself, not its parameters\), got function"):
        catapult.critical_lr(lambda x: model(x), MSE, (X, Y), _sgd(model))
    with pytest.raises(TypeError, match=r"param_groups: model must be a torch.nn.Module \(the model itself, not its "
                                        r"parameters\), got generator"):
        catapult.param_groups(model.parameters(), 0.1)
    with pytest.raises(TypeError, match="parametrize: model must be a torch.nn.Module"):
        catapult.parametrize(3)


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 2.5}, "steps must be an integer in \\[1, 1000000000\\]; got 2.5"),
    ({"steps": float("nan")}, "steps must be an integer in \\[1, 1000000000\\]; got nan"),
    ({"seeds": []}, "seeds must be a non-empty list of integer seeds"),
    ({"seeds": "01"}, "seeds must be a list of integer seeds; got '01'"),
    ({"seeds": [0.5]}, r"seeds\[0\] must be an integer in \[-2\*\*63, 2\*\*64\); got 0.5"),
    ({"seeds": [0, 2 ** 64]}, r"seeds\[1\] must be an integer in \[-2\*\*63, 2\*\*64\); got 18446744073709551616"),
    ({"values": []}, "values is empty"),
])
def test_coord_check_names_its_bad_arguments(kwargs, words):
    args = {"values": [8], "steps": 1, "seeds": [0], **kwargs}
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="coord_check " + words):
        coord_check(lambda w: MLP(4, 3, width=int(w), depth=3), args.pop("values"), batch=batch, **args)


def test_gi_adam_refuses_a_state_of_other_shapes_at_load():
    # it loaded, and the next step() failed inside the update ("The size of tensor a (3) must match")
    small, large = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    source = GIAdam([small], lr=0.1)
    small.grad = torch.ones(3)
    source.step()
    target = GIAdam([large], lr=0.1)
    with pytest.raises(ValueError, match=r"state_dict param group 0: \w+ of parameter 0 has shape \(3,\), the "
                                         r"parameter it loads into \(4,\)"):
        target.load_state_dict(source.state_dict())
    assert not target.state  # nothing was loaded
    same = GIAdam([nn.Parameter(torch.zeros(3))], lr=0.1)
    same.load_state_dict(source.state_dict())
    assert len(same.state) == 1


def test_gi_adam_refuses_a_zero_dim_state_for_a_parameter_with_dims():
    # the check skipped 0-dim moments (to pass the 0-dim step count): a scalar parameter's state loaded
    # into a (3,) one, and the next step() moved the parameter, then raised "output with shape [] doesn't
    # match the broadcast shape [3]" writing the moment back (the state left at the loaded scalar)
    scalar, vector = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.ones(3))
    source = GIAdam([scalar], lr=0.1)
    scalar.grad = torch.tensor(0.5)
    source.step()
    target = GIAdam([vector], lr=0.1)
    with pytest.raises(ValueError, match=r"state_dict param group 0: \w+ of parameter 0 has shape \(\), the "
                                         r"parameter it loads into \(3,\)"):
        target.load_state_dict(source.state_dict())
    assert not target.state and torch.equal(vector, torch.ones(3))


# --- curvature, thresholds and schedules: counts, optimizers and call context (api audit) -------

def _adam_after_a_step(model):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    MSE(model(X), Y).backward()
    opt.step()
    opt.zero_grad()
    return opt


@pytest.mark.parametrize("call", [
    lambda m, other: catapult.preconditioned_sharpness(m, MSE, (X, Y), _adam_after_a_step(other)),
    lambda m, other: catapult.top_eigenpairs(m, MSE, (X, Y), 2, optimizer=_sgd(other)),
    lambda m, other: catapult.hessian_trace(m, MSE, (X, Y), optimizer=_adam_after_a_step(other)),
    lambda m, other: catapult.spectral_density(m, MSE, (X, Y), optimizer=_sgd(other), runs=1, steps=3),
], ids=["preconditioned_sharpness", "top_eigenpairs", "hessian_trace", "spectral_density"])
def test_an_optimizer_holding_none_of_the_models_parameters_is_refused(call):
    # every parameter it does not hold gets P^-1 = 0: the answer was exactly 0, with no error
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    with pytest.raises(ValueError, match="the optimizer holds none of the model's trainable parameters"):
        call(model, other)
    # one parameter held is enough: the other gets P^-1 = 0, as documented
    opt = torch.optim.SGD([model.weight], lr=0.1)
    assert catapult.top_eigenpairs(model, MSE, (X, Y), 1, optimizer=opt).values[0] > 0


@pytest.mark.parametrize("call", [
    lambda m: catapult.top_eigenpairs(m, MSE, (X, Y), 1, scale_by_group_lr=True),
    lambda m: catapult.hessian_trace(m, MSE, (X, Y), scale_by_group_lr=True),
    lambda m: catapult.spectral_density(m, MSE, (X, Y), scale_by_group_lr=True),
])
def test_scale_by_group_lr_without_an_optimizer_is_refused(call):
    # it was ignored: the plain Hessian's spectrum came back as if lr-scaled
    with pytest.raises(ValueError,
                       match="scale_by_group_lr=True scales by the optimizer's per-group lrs: pass optimizer="):
        call(nn.Linear(3, 2))


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -0.1, 0.0, "0.1", True])
def test_instability_threshold_refuses_an_lr_that_is_not_a_finite_positive_number(lr):
    # inf gave a threshold of 0.0, "0.1" gave 20.0 and True gave 2.0
    opt = _sgd(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"instability_threshold lr must be a finite number > 0; got "):
        catapult.instability_threshold(opt, lr=lr)
    assert catapult.instability_threshold(opt, lr=np.float32(0.5)) == 4.0


def test_numpy_integers_are_counts_like_python_integers():
    # each was refused as "<count> must be an integer ..., got np.int64(...)"
    def same(call, **counts):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        plain = call(model, **{key: int(value) if isinstance(value, np.integer) else float(value)
                               for key, value in counts.items()})
        assert call(model, **counts) == plain

    i = np.int64
    same(lambda m, **kw: catapult.sharpness(m, MSE, (X, Y), **kw).value, max_iter=i(50), max_basis=i(4),
         chunk_size=i(3))
    same(lambda m, **kw: catapult.sharpness(m, MSE, (X, Y), coarse=[(i(2), 1e-2)], **kw).value, tol=np.float32(1e-3))
    same(lambda m, **kw: catapult.top_eigenpairs(m, MSE, (X, Y), **kw).values, k=i(2), block_size=np.int32(2))
    same(lambda m, **kw: catapult.hessian_trace(m, MSE, (X, Y), **kw), matvecs=i(6))
    same(lambda m, **kw: catapult.spectral_density(m, MSE, (X, Y), **kw).density.tolist(), runs=i(2), steps=i(3),
         grid_points=i(50), sigma=np.float32(0.25))


@pytest.mark.parametrize("call, words", [
    (lambda m: catapult.sharpness(m, MSE, (X, Y), max_basis="5"), r"^sharpness max_basis must be None or an integer >= 2; got '5'$"),
    (lambda m: catapult.sharpness(m, MSE, (X, Y), max_basis=2.5), "^sharpness max_basis must be None or an integer >= 2; got 2.5$"),
    (lambda m: catapult.sharpness(m, MSE, (X, Y), memory="lean", max_basis=True), "got True"),
    (lambda m: catapult.top_eigenpairs(m, MSE, (X, Y), 1, max_basis=4.5), "^top_eigenpairs max_basis must be None or an integer >= 2; got 4.5$"),
    (lambda m: catapult.spectral_density(m, MSE, (X, Y), max_basis="all"), "^spectral_density max_basis must be None or an integer >= 2; got 'all'$"),
    (lambda m: catapult.spectral_density(m, MSE, (X, Y), sigma=True),
     "^spectral_density sigma must be a finite number > 0; got True$"),
    (lambda m: catapult.sharpness(m, MSE, (X, Y), coarse=2),
     r"coarse must be 'auto', None or \(divisor, tol\) pairs, got 2"),
    (lambda m: catapult.sharpness(m, MSE, (X, Y), init=torch.ones(8, dtype=torch.complex64)),
     "init must be a real tensor .*, got dtype torch.complex64"),
    (lambda m: catapult.top_eigenpairs(m, MSE, (X, Y), 1, init=torch.ones(8, dtype=torch.bool)),
     "init must be a real tensor .*, got dtype torch.bool"),
])
def test_solver_arguments_of_the_wrong_kind_are_named(call, words):
    # max_basis="5" and coarse=2 failed inside ("'<' not supported", "'int' object is not
    # iterable"); max_basis=2.5, sigma=True and a complex init (its imaginary part dropped) were taken
    with pytest.raises((TypeError, ValueError), match=words):
        call(nn.Linear(3, 2))


def test_a_density_of_more_steps_than_dimensions_costs_no_memory_for_its_padding():
    # the padded zero-weight nodes made a grid x runs x steps matrix: steps=10**6 on this model
    # asked numpy for 60 GiB (MemoryError); here 320 MB for nothing
    model = nn.Linear(3, 2)
    tracemalloc.start()
    try:
        dens = catapult.spectral_density(model, MSE, (X, Y), runs=2, steps=20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dens.nodes.shape == (2, 8) and peak < 50e6   # runs x min(steps, n): no padding past n
    small = catapult.spectral_density(model, MSE, (X, Y), runs=2, steps=8)  # the same quadrature
    np.testing.assert_allclose(dens.density, small.density, rtol=1e-6)


@pytest.mark.parametrize("call", [
    lambda m, opt: catapult.sharpness(m, MSE, (X, Y)).value,
    lambda m, opt: catapult.preconditioned_sharpness(m, MSE, (X, Y), opt).value,
    lambda m, opt: catapult.top_eigenpairs(m, MSE, (X, Y), 2).values,
    lambda m, opt: catapult.hessian_trace(m, MSE, (X, Y), matvecs=6),
    lambda m, opt: catapult.spectral_density(m, MSE, (X, Y), runs=1, steps=3).density.tolist(),
    lambda m, opt: catapult.critical_lr(m, MSE, (X, Y), opt).lr,
], ids=["sharpness", "preconditioned_sharpness", "top_eigenpairs", "hessian_trace", "spectral_density",
        "critical_lr"])
def test_inside_inference_mode_the_answer_is_the_one_outside(call):
    # autograd records nothing in inference mode: "the loss does not depend on any trainable
    # parameter" (a wrong diagnosis); under torch.no_grad() they already worked
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = _adam_after_a_step(model)
    outside = call(model, opt)
    with torch.inference_mode():
        inside = call(model, opt)
        assert torch.is_inference_mode_enabled()
    assert inside == outside


@pytest.mark.parametrize("call", [
    lambda m, opt, b: catapult.sharpness(m, MSE, b).value,
    lambda m, opt, b: catapult.sharpness(m, MSE, b, curvature="ggn", chunk_size=3).value,
    lambda m, opt, b: catapult.preconditioned_sharpness(m, MSE, b, opt).value,
    lambda m, opt, b: catapult.top_eigenpairs(m, MSE, batch=b, k=2).values,
    lambda m, opt, b: catapult.hessian_trace(m, MSE, b, matvecs=6),
    lambda m, opt, b: catapult.spectral_density(m, MSE, b, runs=1, steps=3).density.tolist(),
    lambda m, opt, b: catapult.critical_lr(m, MSE, b, opt).lr,
], ids=["sharpness", "ggn_chunks", "preconditioned_sharpness", "top_eigenpairs", "hessian_trace",
        "spectral_density", "critical_lr"])
@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_batch_made_in_inference_mode_is_measured(call, where):
    # an evaluation loop's tensors: torch's "Inference tensors cannot be saved for backward" from
    # every function, called inside inference mode or out of it
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = _adam_after_a_step(model)
    expected = call(model, opt, (X, Y))
    with torch.inference_mode():
        batch = (X.clone(), Y.clone())
        got = call(model, opt, batch) if where == "inside" else None
    if where == "outside":
        got = call(model, opt, batch)
    assert got == expected and batch[0].is_inference()


def test_attach_refuses_an_optimizer_without_param_groups():
    # the scheduler was made, and stepped nothing
    opt = _sgd(nn.Linear(3, 2))
    opt.param_groups.clear()
    with pytest.raises(ValueError, match="attach: the optimizer has no param groups"):
        catapult.schedules.attach(opt, catapult.schedules.warmup(1.0, 10))


@pytest.mark.parametrize("scale, dtype", [(1e37, torch.float32), (1e-30, torch.float32), (1e300, torch.float64),
                                          (1e-300, torch.float64)])
def test_an_init_near_its_dtypes_limits_is_taken_for_its_direction(scale, dtype):
    # only the start vector's direction counts: a warm start scaled by 1e37 in float32 (its norm
    # overflowed) or a float64 one of 1e-300 (zero once cast to float32) was refused as "not
    # finite and non-zero"
    model = nn.Linear(3, 2)
    start = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = catapult.sharpness(model, MSE, (X, Y), init=start.float(), tol=1e-6, coarse=False)
    got = catapult.sharpness(model, MSE, (X, Y), init=(start * scale).to(dtype), tol=1e-6, coarse=False)
    assert got.matvecs == want.matvecs and got.value == pytest.approx(want.value, rel=1e-5)
    for bad in (torch.full((8,), float("inf")), torch.zeros(8)):
        with pytest.raises(ValueError, match="init must be finite and non-zero"):
            catapult.sharpness(model, MSE, (X, Y), init=bad)


@pytest.mark.parametrize("call, truth", [
    (lambda m, opt: catapult.sharpness(m, MSE, (X, Y), tol=1e-6).value, "top"),
    (lambda m, opt: catapult.top_eigenpairs(m, MSE, (X, Y), 2, tol=1e-6).values[0], "top"),
    (lambda m, opt: catapult.hessian_trace(m, MSE, (X, Y), matvecs=90), "trace"),
    (lambda m, opt: catapult.preconditioned_sharpness(m, MSE, (X, Y), opt, tol=1e-6).value, "adam"),
], ids=["sharpness", "top_eigenpairs", "hessian_trace", "preconditioned_sharpness"])
def test_inside_autocast_the_curvature_is_the_full_precision_one(call, truth):
    # a measurement inside a training step's torch.autocast region: the products came back in
    # bfloat16 and the float32 Krylov algebra failed ("addmv input tensors must have the same
    # dtype"); the answer is now the dense float64 Hessian's, as outside autocast
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = _adam_after_a_step(model)
    hessian = dense_hessian(model, MSE, (X, Y)).numpy()
    expected = {"top": lambda: np.linalg.eigvalsh(hessian)[-1], "trace": lambda: np.trace(hessian),
                "adam": lambda: np.linalg.eigvalsh(dense_adam_preconditioned(model, MSE, (X, Y), opt))[-1]}[truth]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = call(model, opt)
        assert autocast_enabled("cpu")   # (torch.is_autocast_enabled takes no device in torch 2.2)
    assert inside == pytest.approx(expected, rel=1e-4)
