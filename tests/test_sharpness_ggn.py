"""``sharpness(curvature="ggn")`` and ``preconditioned_sharpness(curvature="ggn")`` against the
dense Gauss-Newton matrix ``J^T H_L J`` of small float64 MLPs (Jacobian and output Hessian by
``torch.autograd.functional``), eigendecomposed by NumPy.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import adam_next_preconditioner, dense_ggn, dense_hessian

import catapult


def problem(loss="mse", seed=0, n=24, width=6, out=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, out)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    if loss == "mse":
        return model, nn.MSELoss(), (x, torch.randn(n, out, dtype=torch.float64))
    return model, nn.CrossEntropyLoss(), (x, torch.randint(0, out, (n,)))


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_ggn_sharpness_is_the_top_eigenvalue_of_the_dense_gauss_newton_matrix(loss, memory):
    model, loss_fn, batch = problem(loss, seed=1)
    G = dense_ggn(model, loss_fn, batch)
    w, V = np.linalg.eigh(G)
    H_top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    assert abs(H_top - w[-1]) > 1e-3 * w[-1]  # the two curvatures differ here: the test can tell
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", memory=memory,
                             max_iter=300)
    assert est.converged
    assert est.value == pytest.approx(w[-1], rel=1e-8)
    assert abs(float(est.vector.numpy() @ V[:, -1])) / float(est.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    # the default is still the Hessian
    assert catapult.sharpness(model, loss_fn, batch, tol=1e-9).value == pytest.approx(H_top, rel=1e-8)


def test_ggn_sharpness_warm_start_and_micro_batches_keep_the_answer():
    model, loss_fn, batch = problem("ce", seed=2)
    top = np.linalg.eigvalsh(dense_ggn(model, loss_fn, batch))[-1]
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn")
    warm = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", init=cold.vector)
    chunked = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", chunk_size=5)
    for est in (cold, warm, chunked):
        assert est.value == pytest.approx(top, rel=1e-8)
    assert warm.matvecs < cold.matvecs


def test_preconditioned_ggn_sharpness_matches_dense_adam():
    model, loss_fn, batch = problem("mse", seed=3, width=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    loss_fn(model(batch[0]), batch[1]).backward()
    opt.step()
    opt.zero_grad()
    P = adam_next_preconditioner(model, loss_fn, batch, opt)  # from the formula, not the library
    G = dense_ggn(model, loss_fn, batch)
    truth = np.linalg.eigvalsh(G / np.sqrt(P)[:, None] / np.sqrt(P)[None, :])[-1]
    est = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-10,
                                            curvature="ggn")
    assert est.value == pytest.approx(truth, rel=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    ({"curvature": "fisher"}, r"curvature must be one of \('hessian', 'ggn'\), got 'fisher'"),
    ({"curvature": None}, r"curvature must be one of"),
    ({"curvature": "ggn", "coarse": [(2, 1e-2)]}, r"coarse levels are Hessian solves"),
])
def test_bad_curvature_arguments_are_refused_before_any_product(kwargs, message):
    model, loss_fn, batch = problem()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message):
        catapult.sharpness(model, loss_fn, batch, **kwargs)
    assert not calls


class TwoHeads(nn.Module):
    """A model returning several outputs: a dict of two heads, an integer tensor and a float."""

    def __init__(self):
        super().__init__()
        self.body, self.cls, self.reg = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        logits = self.cls(h)
        return {"logits": logits, "value": self.reg(h), "argmax": logits.argmax(-1), "scale": 0.5}


def _two_head_loss(out, y):
    labels, value = y[:, 0].long(), y[:, 1:]
    return (nn.functional.cross_entropy(out["logits"], labels) * out["scale"]
            + ((out["value"] - value) ** 2).mean() + (out["logits"] * out["value"][:, :1]).mean())


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_ggn_of_a_model_with_several_outputs_is_the_dense_one_over_all_of_them(chunk_size):
    torch.manual_seed(0)
    model = TwoHeads().double()
    x = torch.randn(10, 4, dtype=torch.float64)
    targets = torch.cat([torch.randint(0, 3, (10, 1)).double(), torch.randn(10, 2, dtype=torch.float64)], 1)
    batch = (x, targets)  # labels in column 0
    params = dict(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def outputs(flat):  # the float outputs, concatenated: J over all of them
        parts = dict(zip(params, torch.split(flat, [p.numel() for p in params.values()])))
        out = torch.func.functional_call(model, {n: parts[n].view(p.shape) for n, p in params.items()}, (x,))
        return torch.cat([out["logits"].reshape(-1), out["value"].reshape(-1)])

    def loss_of(z):  # the loss in the concatenated outputs: H_L over all of them, cross terms included
        logits, value = z[:30].view(10, 3), z[30:].view(10, 2)
        return _two_head_loss({"logits": logits, "value": value, "scale": 0.5}, batch[1])

    z = outputs(theta).detach()
    J = torch.autograd.functional.jacobian(outputs, theta)
    G = (J.T @ torch.autograd.functional.hessian(loss_of, z) @ J).numpy()
    est = catapult.sharpness(model, _two_head_loss, batch, curvature="ggn", tol=1e-10, max_iter=200,
                             chunk_size=chunk_size)
    assert est.value == pytest.approx(np.linalg.eigvalsh(G)[-1], rel=1e-8)


def test_gauss_newton_of_a_compiled_model_is_refused_before_any_work():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    # before: compiled, then torch's RuntimeError 'torch.compile with aot_autograd does not currently
    # support double backward' at the first product
    with pytest.raises(ValueError, match="curvature='ggn' takes J v by differentiating a backward"):
        catapult.sharpness(torch.compile(model), torch.nn.MSELoss(), batch, curvature="ggn")


def test_gauss_newton_of_a_model_returning_an_opaque_output_is_refused():
    class Output:      # neither a container nor a dataclass (those are walked: test_ggn_output_containers)
        def __init__(self, logits):
            self.logits = logits

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

        def forward(self, x):
            return Output(self.net(x))

    torch.manual_seed(0)
    model = Model().double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))

    def loss_fn(out, target):
        return nn.functional.mse_loss(out.logits, target)

    truth = np.linalg.eigvalsh(dense_hessian(model.net, nn.MSELoss(), batch).numpy())[-1]
    assert catapult.sharpness(model, loss_fn, batch, tol=1e-10).value == pytest.approx(truth, rel=1e-9)
    # before: a Gauss-Newton sharpness of exactly 0.0 (tree_flatten saw no tensor in the output)
    with pytest.raises(ValueError, match=r"curvature='ggn' takes J from the model's outputs .*\(Output; G would be 0"):
        catapult.sharpness(model, loss_fn, batch, curvature="ggn")


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_gauss_newton_of_an_overflowed_loss_is_nan(chunk_size):
    """A loss that is inf with finite outputs (MSE of an output 1e200: (1e200)^2 overflows float64)
    is a diverged model: every product is nan, as HessianOperator's (mutation pass 22b, GN6: without
    the check G v came back finite, [2.] = 2 x^2 v, and the solvers would report a sharpness)."""
    from catapult.curvature.ggn import GaussNewtonOperator
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1e200)
    batch = (torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64))
    G = GaussNewtonOperator(model, nn.MSELoss(), batch, chunk_size=chunk_size)
    assert G.loss == float("inf")
    assert torch.isnan(G(torch.tensor([1.0], dtype=torch.float64))).all()
