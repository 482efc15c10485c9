"""``engine.train`` asks its :class:`~catapult.engine.loop.Processes` what the other processes
see: a process that does not write leaves the run directory alone, and the collapse rule holds
only when every process's final outputs collapsed. ``in_run_directory`` removes only what a
failed run wrote."""
from __future__ import annotations

import pytest
import torch

from catapult.engine import build_run
from catapult.engine.loop import RUN_FILES, Processes, in_run_directory, train
from catapult.engine.run_dir import MANIFEST


def _config():
    return {"name": "tiny", "data": {"name": "digits", "n_train": 96, "n_test": 40},
            "model": {"width": 8, "depth": 2, "parametrization": "sp", "bias": True}, "optimizer": {"lr": 0.05},
            "train": {"steps": 3}, "eval": {"sharpness_every": 0, "test_every": 1}}


class Peer(Processes):
    """A process beside rank 0: it does not write, and another process's outputs did not collapse."""

    writes = False

    def __init__(self):
        self.asked = []

    def collapsed(self, outputs):
        # the union batch's verdict: this process's rows alone are collapsed, another's are not
        from catapult.engine.step import output_collapsed

        self.asked.append(output_collapsed(outputs))
        return False


def _dead(setup):
    """Every first-layer ReLU dead: the same output whatever the input (a collapsed network)."""
    first = next(m for m in setup.model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight.zero_()
        first.bias.fill_(-1.0)
    return setup


def test_a_process_that_does_not_write_leaves_the_run_directory_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    result = train(build_run(_config()), out, progress="none", processes=Peer())
    assert result.status == "finished" and len(result.metrics) == 4
    assert sorted(p.name for p in out.iterdir()) == []
    alone = tmp_path / "alone"
    alone.mkdir()
    train(build_run(_config()), alone, progress="none")   # the one process writes
    assert {"metrics.csv", "summary.json"} <= {p.name for p in alone.iterdir()} <= set(RUN_FILES) | {MANIFEST}


def test_the_collapse_rule_is_the_processes_verdict_on_the_union_batch():
    assert train(_dead(build_run(_config())), progress="none").status == "collapsed"
    peer = Peer()
    result = train(_dead(build_run(_config())), progress="none", processes=peer)
    assert peer.asked == [True]          # this process's own outputs collapsed ...
    assert result.status == "finished"   # ... another's did not


def test_a_run_that_fails_before_writing_leaves_an_earlier_runs_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step,lr,train_loss\n0,0.1,2.3\n")   # an earlier run's records
    (out / "summary.json").write_text('{"status": "finished", "steps_completed": 1}\n')

    def fails(writing):
        def body(path, writing_list):
            if writing:
                writing_list.append(True)
                path.mkdir(exist_ok=True)
                (path / "metrics.csv").write_text("half a run\n")
            raise ValueError("a bad config, found while building")
        return body

    with pytest.raises(ValueError, match="bad config"):
        in_run_directory(out, True, fails(writing=False))   # --overwrite, but nothing written yet
    assert (out / "metrics.csv").read_text() == "step,lr,train_loss\n0,0.1,2.3\n" and (out / "summary.json").exists()
    with pytest.raises(ValueError, match="bad config"):
        in_run_directory(out, True, fails(writing=True))    # it wrote, then failed: its files go
    assert out.is_dir() and not any(out.iterdir())
    new = tmp_path / "new"
    with pytest.raises(ValueError, match="bad config"):
        in_run_directory(new, False, fails(writing=True))   # a directory this call created goes
    assert not new.exists()


def test_the_trace_columns_probes_come_from_the_runs_sharpness_seed():
    # the rule of engine/seeds.py: the eigen-solvers' random vectors (the spectrum columns'
    # probes included) are the third stream, seeds(seed)[2], not the init or data stream
    import catapult
    from catapult.engine.seeds import seeds
    from catapult.engine.sharpness_rule import curvature_options

    config = dict(_config(), seed=7, train={"steps": 1})
    config["eval"] = {"sharpness_every": 1, "test_every": 0, "trace_matvecs": 6}
    setup = build_run(config)
    batch0 = setup.batches.first_batches(1)[0]
    common = curvature_options(setup.config, None)

    def trace(seed):
        return catapult.hessian_trace(setup.model, setup.loss_fn, batch0, matvecs=6, **dict(common, seed=seed))

    want = trace(seeds(7)[2])
    assert want != pytest.approx(trace(seeds(7)[0]), rel=1e-6)   # the probes matter: 6 products, many weights
    assert train(setup, progress="none").metrics[0]["hessian_trace"] == pytest.approx(want, rel=1e-10)


def test_seeds_are_numpys_seed_sequence_states_in_order():
    # the documented rule (init, data, sharpness) = SeedSequence(seed).generate_state(3): a
    # reordering would silently change every stored run's initial weights and batch order
    import numpy as np

    from catapult.engine.seeds import seeds

    for seed in (0, 1, 12345):
        assert seeds(seed) == tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))


def test_the_summary_names_a_run_without_test_evaluations_instead_of_printing_dashes():
    from catapult.engine import format_summary

    with_test = format_summary(train(build_run(_config()), progress="none").summary).splitlines()
    untested = build_run(_config())
    untested.test_set = None   # as train-ddp builds it from shards with no held-out one
    without = format_summary(train(untested, progress="none").summary).splitlines()
    tested = next(line for line in with_test if line.startswith("  test:"))
    assert "loss -" not in tested and "accuracy 0." in tested
    assert next(line for line in without if line.startswith("  test:")) == \
        "  test: none evaluated (no test set, or no evaluation step)"


@pytest.mark.parametrize("stopped_in", ["model.pt", "trajectories.png"])
def test_a_run_stopped_while_writing_its_final_files_leaves_no_finished_summary(tmp_path, monkeypatch, stopped_in):
    # summary.json ("finished") was written first and model.pt in place: a Ctrl-C or kill while
    # it was written left a truncated model.pt beside a summary saying the run had finished
    import catapult.engine.loop as loop

    def stopped(fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a file")     # what a writer leaves when it is stopped
        fh.flush()
        raise KeyboardInterrupt

    if stopped_in == "model.pt":
        monkeypatch.setattr(torch, "save", lambda obj, fh, *a, **k: stopped(fh))
    else:
        monkeypatch.setattr(loop, "plot_run", lambda metrics, fh, **k: stopped(fh))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        loop.run(_config(), out_dir=out, progress="none")
    kept = sorted(p.name for p in out.iterdir())
    assert "summary.json" not in kept and stopped_in not in kept and not any("partial" in k for k in kept)
    assert {"config.yaml", "metrics.csv"} <= set(kept)    # the rows written so far are kept
    monkeypatch.undo()
    loop.run(_config(), out_dir=tmp_path / "whole", progress="none")
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == sorted(RUN_FILES + (MANIFEST,))


def test_the_records_header_is_on_disk_before_any_row(tmp_path):
    # a run killed before its first row left a 0-byte metrics.csv beside config.yaml: a folder
    # that neither `--overwrite` nor a `catapult demo` rerun recognised as a run's
    from catapult.engine.records import MetricsFile
    from catapult.files import is_run_record

    records = MetricsFile(tmp_path / "metrics.csv")
    try:
        assert is_run_record(tmp_path / "metrics.csv")      # read while the writer still holds it
    finally:
        records.close()


def test_a_run_trains_once_a_second_train_of_it_is_refused():
    """A second ``train`` of one set-up started from the first's final weights and optimizer
    state, while its rows said step 0 and its summary gave the first's lambda_0 and lr_target:
    another run, silently. An untrained set-up (no step taken: steps 0) may still train."""
    config = dict(_config(), train={"steps": 2})
    setup = build_run(config)
    first = train(setup, progress="none")
    with pytest.raises(ValueError, match="trained already"):
        train(setup, progress="none")
    again = train(build_run(config), progress="none")  # a new set-up: the same run again
    assert [r["train_loss"] for r in again.metrics] == [r["train_loss"] for r in first.metrics]
    idle = build_run(dict(_config(), train={"steps": 0}))
    assert train(idle, progress="none").metrics[0]["train_loss"] == train(idle, progress="none").metrics[0]["train_loss"]
