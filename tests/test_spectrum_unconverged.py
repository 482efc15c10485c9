"""The summary's ``spectrum_unconverged``: the top-k solves of a run's ``eig_i`` columns
(``eval.spectrum_top_k``) that stopped short of ``eval.sharpness_tol``, counted as
``sharpness_unconverged`` counts the sharpness solves. Before it, a top-k solve cut off by its
product budget logged eig_3 1% off the dense Hessian's with no mark anywhere. Checked against
the dense Hessian of a 160-parameter MLP at its init (``train.steps: 0``: row 0 is the init)."""
import pytest
import torch
from dense_curvature import dense_hessian

from catapult import engine
from catapult.engine.loop import train
from catapult.engine.records import format_summary


def _config(**ev):
    return {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 2, "depth": 2},
            "train": {"steps": 0}, "dtype": "float64",
            "eval": {"sharpness_every": 1, "test_every": 0, **ev}}


@pytest.fixture(scope="module")
def dense_top3():
    setup = engine.build_run(_config())
    hessian = dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0))
    return torch.linalg.eigvalsh(hessian).flip(0)[:3].tolist()


def _row0(config):
    res = train(engine.build_run(config), progress="none")
    return res.metrics[0], res.summary


def test_a_top_k_solve_cut_short_is_counted(dense_top3):
    row, summary = _row0(_config(spectrum_top_k=3, sharpness_max_iter=2, sharpness_tol=1e-12))
    # the logged eig_3 is off the dense truth by far more than a converged solve's tol
    assert abs(row["eig_3"] - dense_top3[2]) > 1e-4 * dense_top3[2]
    assert summary["spectrum_unconverged"] == 1
    assert "top-k (eig_i)" in format_summary(summary)


def test_a_converged_top_k_solve_is_not_counted(dense_top3):
    row, summary = _row0(_config(spectrum_top_k=3, sharpness_max_iter=200, sharpness_tol=1e-10))
    assert [row[f"eig_{i}"] for i in (1, 2, 3)] == pytest.approx(dense_top3, rel=1e-7)
    assert summary["spectrum_unconverged"] == 0 and summary["sharpness_unconverged"] == 0
    assert "NOT converged" not in format_summary(summary)


def test_a_trace_alone_is_no_unconverged_solve():
    # Hutch++ spends its fixed product budget: no convergence test, nothing to count, even with
    # a sharpness budget no solve converges in (those are counted as sharpness_unconverged)
    row, summary = _row0(_config(trace_matvecs=3, sharpness_max_iter=2, sharpness_tol=1e-12))
    assert row["hessian_trace"] is not None
    assert summary["spectrum_unconverged"] == 0 and summary["sharpness_unconverged"] == 1
    assert "1 sharpness solve(s)" in format_summary(summary)


def test_a_summary_written_before_the_count_still_formats():
    _, summary = _row0(_config(sharpness_every=0))
    del summary["spectrum_unconverged"]
    assert "NOT converged" not in format_summary(summary)


def _cut_short_run(tmp_path, top_k):
    """A 2-step run measuring at steps 0 and 2 with solves cut short at max_iter 2: its result and
    its metrics.csv read with the csv module (header, rows), not the engine's reader."""
    import csv

    config = _config(spectrum_top_k=top_k, sharpness_max_iter=2, sharpness_tol=1e-12, sharpness_every=2)
    config["train"], config["optimizer"] = {"steps": 2}, {"lr": 1e-3}
    res = train(engine.build_run(config), tmp_path / "run", progress="none")
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return res, header, rows


def test_each_row_marks_whether_its_top_k_solve_converged(dense_top3, tmp_path):
    # the summary's count said how many rows were approximate, not which: eig_converged marks each
    # measured row (1 / 0), empty on rows without a top-k solve, last in the header (the columns
    # before it keep their places). Read back with the csv module, not the engine's reader.
    from catapult.engine.records import read_metrics

    res, header, rows = _cut_short_run(tmp_path, top_k=3)
    assert header[-6:] == ["test_accuracy", "eig_1", "eig_2", "eig_3", "eig_converged", "sharpness_converged"]
    marks = [dict(zip(header, r))["eig_converged"] for r in rows]
    assert marks == ["0", "", "0"]   # steps 0 and 2 measured, cut short by max_iter 2
    assert abs(float(rows[0][header.index("eig_3")]) - dense_top3[2]) > 1e-4 * dense_top3[2]
    assert res.summary["spectrum_unconverged"] == 2
    assert [r["eig_converged"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [0, None, 0]
    row, _ = _row0(_config(spectrum_top_k=3, sharpness_max_iter=200, sharpness_tol=1e-10))
    assert row["eig_converged"] == 1 and row["eig_3"] == pytest.approx(dense_top3[2], rel=1e-7)


def test_a_trace_alone_has_no_mark():
    row, _ = _row0(_config(trace_matvecs=3))
    assert "eig_converged" not in row


@pytest.mark.parametrize("max_basis, k, kept", [(10, 3, 10), (20, 3, 20), (10, 6, 19)])
def test_the_top_k_solve_keeps_no_more_krylov_vectors_than_max_basis(dense_top3, monkeypatch, max_basis, k, kept):
    # eval.sharpness_max_basis is a memory bound ("Krylov vectors kept"): the engine's top-k solve
    # ignored it and kept the solver's own 32 vectors; it now keeps the bound, or 3 k + block where
    # the bound leaves less (a solve restarting after every block costs up to 17x the products)
    from catapult.curvature import top_k

    capacities = []

    class Recorded(top_k.KrylovBasis):
        def __init__(self, *args, capacity=None, **kwargs):
            capacities.append(capacity)
            super().__init__(*args, capacity=capacity, **kwargs)

    monkeypatch.setattr(top_k, "KrylovBasis", Recorded)
    row, summary = _row0(_config(spectrum_top_k=k, sharpness_max_basis=max_basis, sharpness_tol=1e-10,
                                 sharpness_max_iter=200))
    assert capacities == [kept]
    assert summary["spectrum_unconverged"] == 0 and row["eig_converged"] == 1
    assert [row[f"eig_{i}"] for i in (1, 2, 3)] == pytest.approx(dense_top3, rel=1e-7)


def test_the_advice_names_the_remedy_that_works():
    # float32 difference products at tol 1e-5: their own error is above the tol, and the summary
    # said "raise eval.sharpness_max_iter", which changed nothing (the solves stopped at 12-23
    # products of 100, and of 1000); float64 products converge
    def tanh32(**ev):
        config = _config(sharpness_hvp="finite_difference", sharpness_tol=1e-5, spectrum_top_k=2, **ev)
        return dict(config, dtype="float32", model={"width": 2, "depth": 2, "activation": "tanh"})

    for max_iter in (100, 1000):
        row, summary = _row0(tanh32(sharpness_max_iter=max_iter))
        assert summary["sharpness_unconverged"] == summary["spectrum_unconverged"] == 1
        assert row["sharpness_matvecs"] < 100 and row["eig_converged"] == 0
        assert summary["unconverged_below_budget"] == 2
        advice = format_summary(summary)
        assert "eval.sharpness_dtype=float64" in advice and "raise eval.sharpness_max_iter" not in advice
    _, summary = _row0(tanh32(sharpness_dtype="float64"))
    assert summary["sharpness_unconverged"] == summary["spectrum_unconverged"] == 0
    # a budget too small is still told to raise it, and nothing else
    _, summary = _row0(_config(spectrum_top_k=3, sharpness_max_iter=2, sharpness_tol=1e-12))
    assert summary["unconverged_below_budget"] == 0
    advice = format_summary(summary)
    assert "(raise eval.sharpness_max_iter)" in advice and "float64" not in advice


def test_each_row_marks_whether_its_sharpness_solve_converged(dense_top3, tmp_path):
    # the sharpness column had no per-row mark (only summary.json's sharpness_unconverged count): a
    # solve cut short at max_iter 2 logged a sharpness off the dense top eigenvalue like any other.
    # sharpness_converged marks each measured row (1 / 0), empty elsewhere, last in the header
    # (after eig_converged: the columns before it keep their places). Read with the csv module.
    from catapult.engine.records import read_metrics

    res, header, rows = _cut_short_run(tmp_path, top_k=1)
    assert header[:9] == ["step", "lr", "threshold", "train_loss", "train_accuracy", "sharpness",
                          "sharpness_matvecs", "test_loss", "test_accuracy"]
    assert header[-3:] == ["eig_1", "eig_converged", "sharpness_converged"]
    marks = [dict(zip(header, r))["sharpness_converged"] for r in rows]
    assert marks == ["0", "", "0"]   # steps 0 and 2 measured, both cut short by max_iter 2
    assert abs(float(rows[0][header.index("sharpness")]) - dense_top3[0]) > 1e-4 * dense_top3[0]
    assert res.summary["sharpness_unconverged"] == 2
    assert [r["sharpness_converged"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [0, None, 0]
    row, summary = _row0(_config(sharpness_max_iter=200, sharpness_tol=1e-10))
    assert row["sharpness_converged"] == 1 and row["sharpness"] == pytest.approx(dense_top3[0], rel=1e-7)
    assert summary["sharpness_unconverged"] == 0


def test_a_run_without_sharpness_has_no_mark(tmp_path):
    config = _config(sharpness_every=0)
    config["train"], config["optimizer"] = {"steps": 1}, {"lr": 1e-3}
    train(engine.build_run(config), tmp_path / "run", progress="none")
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "sharpness_converged" not in header
