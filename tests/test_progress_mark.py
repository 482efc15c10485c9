"""The progress display's sharpness says when its solve did not converge: a trailing ``?`` after
the value of a row marked ``sharpness_converged`` 0 (before it, a sharpness cut short at
``eval.sharpness_max_iter`` showed like a converged one while the run was going)."""
from catapult import engine
from catapult.engine.progress import Progress


def _row(step, sharpness=None, mark=None):
    row = {"step": step, "lr": 0.1, "threshold": 20.0, "train_loss": 1.0, "train_accuracy": 0.5,
           "sharpness": sharpness, "test_loss": None}
    if mark is not None:
        row["sharpness_converged"] = mark
    return row


def test_lines_mark_a_sharpness_whose_solve_did_not_converge(capsys):
    progress = Progress("lines", 3, "r")
    for row in (_row(0, 3.0, 0), _row(1), _row(2, 4.0, 1), _row(3, 5.0)):  # row 3: no mark (an older row)
        progress.update(row)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" sharpness ")[1].split(" (")[0] for line in lines] == ["3?", "3?", "4", "5"]


def test_a_run_cut_short_shows_the_mark_and_a_converged_one_does_not(capsys):
    def lines(**ev):
        config = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 2, "depth": 2},
                  "train": {"steps": 2}, "dtype": "float64", "optimizer": {"lr": 1e-3},
                  "eval": {"sharpness_every": 2, "test_every": 0, **ev}}
        res = engine.run(config, progress="lines")
        return res, [line for line in capsys.readouterr().err.splitlines() if " sharpness " in line]

    res, short = lines(sharpness_max_iter=2, sharpness_tol=1e-12)
    assert [r["sharpness_converged"] for r in res.metrics if r["sharpness"] is not None] == [0, 0]
    assert short and all(f"sharpness {res.metrics[0]['sharpness']:.4g}?" in line for line in short[:2])
    res, good = lines(sharpness_max_iter=200, sharpness_tol=1e-10)
    assert good and not any("?" in line for line in good)
