"""The summary's marks of the solves behind its sharpness numbers: ``final_sharpness_converged``,
``peak_sharpness_converged`` (the marks of the rows those values came from) and
``lambda_0_converged`` (every solve lambda_0 averages; a learning rate ``c/lambda0`` carries its
error). Before them the summary gave a final sharpness, a peak and a lambda_0 cut short at
``eval.sharpness_max_iter`` like converged ones (only a run-level count said some solve had not).
Checked against the dense Hessian of a 160-parameter MLP at its init."""
import pytest
import torch
from dense_curvature import dense_hessian

from catapult import engine
from catapult.engine.records import format_summary, summarize, unconverged_advice


def _config(steps=0, **ev):
    return {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 2, "depth": 2},
            "train": {"steps": steps}, "dtype": "float64", "optimizer": {"lr": 1e-3},
            "eval": {"sharpness_every": 1, "test_every": 0, **ev}}


@pytest.fixture(scope="module")
def dense_lambda0():
    setup = engine.build_run(_config())
    return float(torch.linalg.eigvalsh(dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0)))[-1])


CUT_SHORT = dict(sharpness_max_iter=2, sharpness_tol=1e-12)


def test_final_and_peak_sharpness_carry_their_solves_marks(dense_lambda0):
    res = engine.run(_config(**CUT_SHORT), progress="none")
    s = res.summary
    assert abs(s["final_sharpness"] - dense_lambda0) > 1e-4 * dense_lambda0  # truly approximate
    assert s["final_sharpness_converged"] is False and s["peak_sharpness_converged"] is False
    assert "final %.4g (not converged)" % s["final_sharpness"] in format_summary(s)
    good = engine.run(_config(sharpness_max_iter=200, sharpness_tol=1e-10), progress="none").summary
    assert good["final_sharpness"] == pytest.approx(dense_lambda0, rel=1e-8)
    assert good["final_sharpness_converged"] is True and good["peak_sharpness_converged"] is True
    assert "(not converged)" not in format_summary(good)


def _summary(rows):
    config = {"name": "r", "train": {"steps": 2}, "optimizer": {"lr": 0.1, "name": "sgd"}, "dtype": "float64",
              "eval": {}}
    full = [{"step": r[0], "lr": 0.1, "threshold": 20.0, "train_loss": 1.0, "train_accuracy": 0.5,
             "sharpness": r[1], "sharpness_matvecs": 3, "test_loss": None, "test_accuracy": None,
             **({} if r[2] is None else {"sharpness_converged": r[2]})} for r in rows]
    return summarize(config, full, status="finished", diverged_at=None, lambda_0=1.0, lr_trgt=0.1,
                     threshold_target=20.0, n_params=3, device="cpu", sharpness_kind="hessian", matvecs_total=9,
                     measurements=3, unconverged=1, wall_time=0.0)


def test_the_peak_and_the_final_value_each_take_their_own_rows_mark():
    s = _summary([(0, 2.0, 1), (1, 5.0, 0), (2, 3.0, 1)])
    assert (s["peak_sharpness"], s["peak_sharpness_converged"]) == (5.0, False)
    assert (s["final_sharpness"], s["final_sharpness_converged"]) == (3.0, True)
    s = _summary([(0, 5.0, 1), (1, float("nan"), 0)])   # the peak over finite values only
    assert (s["peak_sharpness_converged"], s["final_sharpness_converged"]) == (True, False)
    s = _summary([(0, 2.0, None), (1, 3.0, None)])      # rows of a file written before the mark
    assert s["final_sharpness_converged"] is None and s["peak_sharpness_converged"] is None
    assert "not converged" not in format_summary(s)


def test_a_learning_rate_from_an_unconverged_lambda0_says_so(dense_lambda0):
    # no sharpness tracked: the lambda_0 solve is the run's only one, and lr = 2/lambda_0 from it
    res = engine.run(_config(steps=1, sharpness_every=0, **CUT_SHORT) | {"optimizer": {"lr": "2^1/lambda0"}},
                     progress="none")
    s = res.summary
    assert abs(s["lambda_0"] - dense_lambda0) > 1e-4 * dense_lambda0
    assert s["lambda_0_converged"] is False and s["sharpness_unconverged"] == 1
    text = format_summary(s)
    assert f"lambda_0 {s['lambda_0']:.4g} (not converged)" in text
    assert "lambda_0 is from a solve that did not converge: lr '2^1/lambda0'" in unconverged_advice(s)
    assert "lr '2^1/lambda0' (lr_trgt) carries its error" in text
    good = engine.run(_config(steps=1, sharpness_every=0, sharpness_tol=1e-10, sharpness_max_iter=200)
                      | {"optimizer": {"lr": "2^1/lambda0"}}, progress="none").summary
    assert good["lambda_0"] == pytest.approx(dense_lambda0, rel=1e-8) and good["lambda_0_converged"] is True
    assert "lambda_0 is from" not in format_summary(good)
    # an absolute lr and no sharpness: no lambda_0, no mark
    none = engine.run(_config(steps=1, sharpness_every=0), progress="none").summary
    assert none["lambda_0"] is None and none["lambda_0_converged"] is None


def test_a_summary_written_before_the_marks_still_formats():
    s = engine.run(_config(**CUT_SHORT), progress="none").summary
    for key in ("final_sharpness_converged", "peak_sharpness_converged", "lambda_0_converged"):
        del s[key]
    text = format_summary(s)
    assert "(not converged)" not in text and "lambda_0 is from" not in text and "NOT converged" in text


def test_the_batched_engine_marks_its_summaries_as_the_local_one():
    from catapult import config as cfg
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.executors import Cell

    def local(config, progress=None):
        return engine.run(config, progress="none")

    base = {"data": {"name": "digits", "n_train": 64, "n_test": 32}, "dtype": "float64",
            "model": {"name": "mlp", "width": 8, "depth": 2}, "train": {"steps": 2}}
    cells = [Cell(i, cfg.validate({**base, "name": f"c{i}", "optimizer": {"name": "sgd", "lr": f"2^{i}/lambda0"},
                                   "eval": {"sharpness_every": 1, "test_every": 0,
                                            "sharpness_max_iter": 2 if i else 200, "sharpness_tol": 1e-10}}))
             for i in range(2)]
    executor = EnsembleExecutor(local, kernels=True)
    batched = dict(executor.run(cells))
    assert executor.fallbacks == []
    for cell, want in zip(cells, (True, False)):
        got, ref = batched[cell.id].summary, local(cell.config).summary
        for key in ("lambda_0_converged", "final_sharpness_converged", "peak_sharpness_converged"):
            assert got[key] is ref[key] is want, (cell.id, key)


def test_each_catapult_carries_the_marks_of_its_sharpness_before_and_after():
    # a catapult is a verdict on two sharpness values (before the spike, after its peak): a drop read
    # off a solve cut short may be the solve's error, and the summary's catapults said nothing of it
    from catapult.engine.records import summarize as summarize_

    def events(before_mark, after_mark):
        losses, sharp = [1.0, 1.0, 5.0, 1.0, 1.0], [10.0, 10.0, None, 4.0, None]
        marks = [1, before_mark, None, after_mark, None]
        metrics = [{"step": t, "train_loss": l, "train_accuracy": 0.5, "sharpness": s, "test_loss": None,
                    "test_accuracy": None, "lr": 0.1, "threshold": 20.0,
                    **({} if m is None else {"sharpness_converged": m})}
                   for t, (l, s, m) in enumerate(zip(losses, sharp, marks))]
        config = {"name": "r", "train": {"steps": 4}, "optimizer": {"lr": 0.1, "name": "sgd"}, "dtype": "float64",
                  "eval": {}}
        return summarize_(config, metrics, status="finished", diverged_at=None, lambda_0=1.0, lr_trgt=0.1,
                          threshold_target=20.0, n_params=1, device="cpu", sharpness_kind="hessian",
                          matvecs_total=0, measurements=3, unconverged=0, wall_time=0.0)["catapults"]

    assert [e["sharpness_converged"] for e in events(1, 1)] == [True]
    assert [e["sharpness_converged"] for e in events(1, 0)] == [False]   # after the peak: cut short
    assert [e["sharpness_converged"] for e in events(0, 1)] == [False]   # step 1's 10.0 is the one before
    assert [e["sharpness_converged"] for e in events(None, 1)] == [None]  # a row without a mark
