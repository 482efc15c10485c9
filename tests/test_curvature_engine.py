"""The engine logs top-k eigenvalues and the trace on its sharpness cadence (eval.spectrum_top_k,
eval.trace_matvecs), and eval.sharpness_memory: lean keeps the measured sharpness."""
import math

import pytest

from catapult import config as C
from catapult.engine import run

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(optimizer, **ev):
    return C.validate({
        "name": "tiny",
        "data": {"name": "digits", "n_train": 120, "n_test": 60},
        "model": {"width": 16, "depth": 3, "parametrization": "sp"},
        "optimizer": {"name": optimizer, "lr": 0.01},
        "train": {"steps": 7},
        "eval": {"sharpness_every": 6, "test_every": 0, "sharpness_tol": 1e-6, **ev},
    })


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_engine_logs_top_k_and_trace_with_sharpness(optimizer):
    result = run(tiny(optimizer, spectrum_top_k=2, trace_matvecs=6), progress="none")
    measured = [row for row in result.metrics if row.get("sharpness") is not None]
    assert measured
    for row in measured:
        # the top eigenvalue of the same operator (Hessian, or P^-1/2 H P^-1/2 for Adam)
        assert row["eig_1"] == pytest.approx(row["sharpness"], rel=1e-4)
        assert row["eig_1"] >= row["eig_2"]
        assert math.isfinite(row["hessian_trace"])
    assert all("eig_1" not in row for row in result.metrics if row.get("sharpness") is None)


def test_lean_memory_setting_gives_the_same_sharpness():
    fast = run(tiny("sgd"), progress="none").metrics
    lean = run(tiny("sgd", sharpness_memory="lean"), progress="none").metrics
    # the same rows, measured at the same steps: 0, 6 (sharpness_every 6) and the final 7 (measured); a lean run
    # that measured nothing (or fewer rows: zip stops at the shorter) compared nothing before
    measured = [[row["step"] for row in rows if row.get("sharpness") is not None] for rows in (fast, lean)]
    assert len(fast) == len(lean) and measured == [[0, 6, 7], [0, 6, 7]]
    for a, b in zip(fast, lean):
        if a.get("sharpness") is not None:
            assert b["sharpness"] == pytest.approx(a["sharpness"], rel=1e-5)
    with pytest.raises(C.ConfigError):
        tiny("sgd", sharpness_memory="small")


def test_metrics_csv_holds_the_logged_spectrum(tmp_path):
    from catapult.engine import read_metrics

    result = run(tiny("sgd", spectrum_top_k=2, trace_matvecs=6), out_dir=tmp_path / "run", progress="none")
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-5:] == ["eig_1", "eig_2", "hessian_trace", "eig_converged", "sharpness_converged"]
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == len(result.metrics)
    for got, want in zip(rows, result.metrics):
        for key in ("eig_1", "eig_2", "hessian_trace", "eig_converged", "sharpness_converged"):
            assert got[key] == want.get(key)  # repr round-trips floats exactly; None when not measured


def test_spectrum_block_size_logs_every_copy_of_a_repeated_top_eigenvalue():
    # one Linear layer under MSE: H = c I_10 (x) X^T X whatever the weights, so its top eigenvalue
    # is there 10 times. Three start vectors log three copies (one start vector logged 3.327,
    # 3.327, 0.546 here: the rest of the eigenspace out of its Krylov space)
    def linear(**ev):
        return C.validate({
            "name": "linear", "dtype": "float64",
            "data": {"name": "digits", "n_train": 120, "n_test": 60},
            "model": {"width": 16, "depth": 1, "parametrization": "sp"},
            "optimizer": {"name": "sgd", "lr": 0.01}, "train": {"steps": 2},
            "eval": {"sharpness_every": 1, "test_every": 0, "sharpness_tol": 1e-8,
                     "spectrum_top_k": 3, **ev}})
    rows = [r for r in run(linear(spectrum_block_size=3), progress="none").metrics if "eig_1" in r]
    assert len(rows) == 3
    for row in rows:
        assert row["eig_2"] == pytest.approx(row["eig_1"], rel=1e-6)
        assert row["eig_3"] == pytest.approx(row["eig_1"], rel=1e-6)
        assert row["eig_1"] == pytest.approx(row["sharpness"], rel=1e-6)
    with pytest.raises(C.ConfigError, match="eval.spectrum_block_size"):
        linear(spectrum_block_size=0)
    with pytest.raises(C.ConfigError, match=r"eval\.spectrum_block_size: at most eval\.spectrum_top_k = 3"):
        linear(spectrum_block_size=4)
    with pytest.raises(C.ConfigError, match="set eval.spectrum_top_k or remove it"):
        linear(spectrum_block_size=2, spectrum_top_k=0)
