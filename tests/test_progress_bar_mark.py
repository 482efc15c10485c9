"""The tqdm bar's sharpness carries the ``?`` of an unconverged solve as the plain lines do
(mutation pass 13: only the lines were checked). Truth: the bar's postfix after each row."""
from catapult.engine.progress import Progress
from test_progress_mark import _row


def test_the_bar_marks_a_sharpness_whose_solve_did_not_converge():
    progress = Progress("bar", 3, "r")
    shown = []
    for row in (_row(0, 3.0, 0), _row(1), _row(2, 4.0, 1), _row(3, 5.0)):
        progress.update(row)
        shown.append(progress.bar.postfix.split("sharp=")[1])
    progress.close("finished")
    assert shown == ["3?", "3?", "4", "5"]
