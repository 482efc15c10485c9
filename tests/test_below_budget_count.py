"""Mutation pass 12 (engine.loop's unconverged_below_budget over a run's later measurements, not
only row 0's): it counts the sharpness solves that stopped unconverged *below* eval.sharpness_max_iter.
Truth: each row's own sharpness_matvecs and sharpness_converged mark, counted here."""
from catapult import engine
from catapult.engine.loop import train


def _summary_and_rows(**ev):
    config = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 2, "depth": 2},
              "train": {"steps": 3}, "dtype": "float64",
              "eval": {"sharpness_every": 1, "test_every": 0, **ev}}
    res = train(engine.build_run(config), progress="none")
    return res.summary, [r for r in res.metrics if r.get("sharpness") is not None]


def test_converged_solves_are_not_counted_below_the_budget():
    summary, rows = _summary_and_rows(sharpness_tol=1e-6, sharpness_max_iter=100)
    assert len(rows) == 4 and all(r["sharpness_converged"] == 1 and r["sharpness_matvecs"] < 100 for r in rows)
    assert summary["sharpness_unconverged"] == 0 and summary["unconverged_below_budget"] == 0


def test_solves_that_used_the_whole_budget_are_not_counted_below_it():
    summary, rows = _summary_and_rows(sharpness_tol=1e-14, sharpness_max_iter=2)
    assert len(rows) == 4 and all(r["sharpness_converged"] == 0 and r["sharpness_matvecs"] == 2 for r in rows)
    assert summary["sharpness_unconverged"] >= 4 and summary["unconverged_below_budget"] == 0
