"""Which row's mark each of the summary's sharpness values carries (mutation pass 13), on
hand-written rows whose values tie or sit on the edges of a catapult: the peak's mark is that of
the FIRST row reaching the peak, a catapult's ``sharpness_before`` may be measured at the spike's
start step itself and its ``sharpness_after`` never at the peak, one unconverged solve makes the
verdict unconverged whatever the other's mark, and a diverged run's final sharpness (none) has no
mark. Truth: the rule ``summarize``'s docstring and ``analysis.detect_catapults`` state."""
from __future__ import annotations

from catapult.engine.records import summarize


def _summary(rows, *, status="finished", diverged_at=None, losses=None):
    """``summarize`` of rows ``(step, sharpness, mark or None)`` (train losses 1.0 unless given)."""
    losses = losses or [1.0] * len(rows)
    metrics = [{"step": t, "lr": 0.1, "threshold": 20.0, "train_loss": loss, "train_accuracy": 0.5,
                "sharpness": s, "sharpness_matvecs": 3, "test_loss": None, "test_accuracy": None,
                **({} if m is None else {"sharpness_converged": m})} for (t, s, m), loss in zip(rows, losses)]
    config = {"name": "r", "train": {"steps": len(rows) - 1}, "optimizer": {"lr": 0.1, "name": "sgd"},
              "dtype": "float64", "eval": {}}
    return summarize(config, metrics, status=status, diverged_at=diverged_at, lambda_0=1.0, lr_trgt=0.1,
                     threshold_target=20.0, n_params=3, device="cpu", sharpness_kind="hessian", matvecs_total=9,
                     measurements=len(rows), unconverged=1, wall_time=0.0)


def test_the_peak_takes_the_mark_of_the_first_row_that_reached_it():
    s = _summary([(0, 5.0, 0), (1, 5.0, 1), (2, 3.0, 1)])
    assert (s["peak_sharpness"], s["peak_sharpness_converged"]) == (5.0, False)
    s = _summary([(0, 5.0, 1), (1, 5.0, 0), (2, 3.0, 1)])
    assert (s["peak_sharpness"], s["peak_sharpness_converged"]) == (5.0, True)


def test_a_diverged_run_has_no_final_sharpness_and_so_no_mark_for_it():
    s = _summary([(0, 2.0, 1), (1, 3.0, 0), (2, 4.0, 1)], status="diverged", diverged_at=2)
    assert s["final_sharpness"] is None and s["final_sharpness_converged"] is None
    assert (s["peak_sharpness"], s["peak_sharpness_converged"]) == (4.0, True)


# a spike at steps 2..3 (loss 5 at step 2, the start and the peak), sharpness 10 before it and 4 after
SPIKE = [1.0, 1.0, 5.0, 1.0, 1.0]


def _catapult(sharpness, marks):
    events = _summary(list(zip(range(5), sharpness, marks)), losses=SPIKE)["catapults"]
    assert len(events) == 1, events
    return events[0]


def test_the_value_before_may_be_measured_at_the_spikes_start_step():
    # sharpness_before is the largest value up to AND including the start: 12 at step 2, cut short
    event = _catapult([10.0, 10.0, 12.0, 4.0, None], [1, 1, 0, 1, None])
    assert (event["start"], event["sharpness_before"], event["sharpness_converged"]) == (2, 12.0, False)
    event = _catapult([10.0, 10.0, 12.0, 4.0, None], [0, 0, 1, 1, None])
    assert event["sharpness_converged"] is True


def test_the_value_after_is_never_the_peaks_own_row():
    # after the peak (step 2) the least value is 4 at step 3, converged; step 2 also measured 4, cut short
    event = _catapult([10.0, 10.0, 4.0, 4.0, None], [1, 1, 0, 1, None])
    assert (event["peak"], event["sharpness_after"], event["sharpness_converged"]) == (2, 4.0, True)


def test_one_unconverged_solve_makes_the_verdict_unconverged_whatever_the_others_mark():
    assert _catapult([10.0, 10.0, None, 4.0, None], [1, None, None, 0, None])["sharpness_converged"] is False
    assert _catapult([10.0, 10.0, None, 4.0, None], [1, 0, None, None, None])["sharpness_converged"] is False
    assert _catapult([10.0, 10.0, None, 4.0, None], [1, 1, None, None, None])["sharpness_converged"] is None


def test_a_summary_without_the_lambda0_mark_has_no_note_whatever_its_lr():
    # a summary written before lambda_0_converged (or lambda_0 not measured: None) with lr c/lambda0
    # says nothing of lambda_0's solve: only False says it did not converge
    from catapult.engine.records import lambda_0_note, unconverged_advice

    for summary in ({"lr": "2^3/lambda0"}, {"lr": "2^3/lambda0", "lambda_0_converged": None},
                    {"lr": "2^3/lambda0", "lambda_0_converged": True}):
        assert lambda_0_note(summary) == ""
        assert "lambda_0 is from" not in unconverged_advice({**summary, "sharpness_unconverged": 1})
    assert lambda_0_note({"lr": "2^3/lambda0", "lambda_0_converged": False}).startswith("lambda_0 is from a solve")


def test_the_text_marks_the_peak_and_the_final_value_each_by_its_own_solve():
    from catapult.engine.records import format_summary

    text = format_summary({**_summary([(0, 5.0, 0), (1, 3.0, 1)]), "wall_time_s": 0.0})
    assert "final 3  peak 5 (not converged)  threshold" in text, text
    text = format_summary({**_summary([(0, 5.0, 1), (1, 3.0, 0)]), "wall_time_s": 0.0})
    assert "final 3 (not converged)  peak 5  threshold" in text, text
