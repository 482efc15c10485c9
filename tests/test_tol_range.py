"""``tol`` is a relative error bound, ``|value - lambda| <= tol |value|``: at 1 or more it holds for
a value of any size and either sign, so a solve stopped on its first products and was called
converged. ``sharpness``, ``preconditioned_sharpness``, ``top_eigenpairs``, ``lr_scaled_sharpness``,
``SharpnessTracker`` and ``eval.sharpness_tol`` took ``tol=1.0`` and ``2.0`` (no config, bench
script or test asks for such a tol); they now refuse it naming ``tol`` and the range (0, 1)."""
import pytest
import torch

import catapult
from catapult.config import ConfigError, validate
from catapult.optim.thresholds import lr_scaled_sharpness

MSE = torch.nn.MSELoss()
X, Y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [1.0]])
WORDS = r"tol must be a finite number in \(0, 1\); got "


def _model():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    return model


CALLS = {
    "sharpness": lambda tol: catapult.sharpness(_model(), MSE, (X, Y), tol=tol),
    "preconditioned_sharpness": lambda tol: catapult.preconditioned_sharpness(
        (m := _model()), MSE, (X, Y), torch.optim.Adam(m.parameters(), lr=1.0), tol=tol),
    "top_eigenpairs": lambda tol: catapult.top_eigenpairs(_model(), MSE, (X, Y), 2, tol=tol),
    "lr_scaled_sharpness": lambda tol: lr_scaled_sharpness(
        (m := _model()), MSE, (X, Y), torch.optim.SGD(m.parameters(), lr=1.0), tol=tol),
    "SharpnessTracker": lambda tol: catapult.SharpnessTracker(_model(), MSE, tol=tol),
}


@pytest.mark.parametrize("tol", [1.0, 1, 2.0, 1e3])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_tol_of_one_or_more_is_refused_naming_tol_and_its_range(name, tol):
    # Hessian diag(4, 1) at w = 0 (P^-1 H = diag(20, 10) for Adam's first step): at tol 0.5, just
    # inside the range, the top value is 4 (20) within the 0.5 the solve says it reached
    if name != "SharpnessTracker":
        est = CALLS[name](0.5)
        value = est.values[0] if name == "top_eigenpairs" else est.value
        truth = 20.0 if name == "preconditioned_sharpness" else 4.0
        assert est.converged and abs(value - truth) <= 0.5 * abs(value)
    with pytest.raises(ValueError, match=f"^{name} {WORDS}{tol!r}$"):
        CALLS[name](tol)


@pytest.mark.parametrize("tol", [1.0, 2.0])
def test_eval_sharpness_tol_of_one_or_more_is_a_config_error(tol):
    with pytest.raises(ConfigError, match="sharpness_tol"):
        validate({"eval": {"sharpness_tol": tol}})
