"""The summary's counts of the sharpness solves (``sharpness_measurements``,
``sharpness_unconverged``, ``sharpness_matvecs``) against the rows they describe. In a full-batch
run lambda_0 is row 0's measurement (reused, counted once): with a product budget no solve can
converge in, every measured row is one unconverged solve. Dropping lambda_0's estimates from the
unconverged count survived the engine tests."""
from catapult import engine


def test_every_unconverged_solve_is_counted_once_lambda0_included():
    config = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 8, "depth": 2},
              "train": {"steps": 2}, "dtype": "float64",
              "eval": {"sharpness_every": 1, "test_every": 0, "sharpness_max_iter": 2, "sharpness_tol": 1e-12}}
    res = engine.run(config, progress="none")
    measured = [row for row in res.metrics if row["sharpness"] is not None]
    assert [row["step"] for row in measured] == [0, 1, 2]
    assert [row["sharpness_matvecs"] for row in measured] == [2, 2, 2]  # the budget, spent each time
    assert res.summary["sharpness_measurements"] == 3
    assert res.summary["sharpness_unconverged"] == 3   # lambda_0's (row 0's) solve is one of them
    assert res.summary["sharpness_matvecs"] == 6


def test_a_run_that_measures_no_lambda0_records_no_lambda0_batches():
    # no sharpness tracked and an absolute lr: lambda_0 is never measured, so no batches were
    # averaged for it (None, as lambda_0 itself; a 0 read as "averaged over zero batches")
    config = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 8, "depth": 2},
              "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0}, "optimizer": {"lr": 0.1}}
    res = engine.run(config, progress="none")
    assert res.summary["lambda_0"] is None and res.summary["lambda0_batches"] is None
