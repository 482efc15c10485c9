"""``catapult spectrum --plot`` into a folder that cannot be made (under /proc here; no permission
elsewhere) measured the whole spectrum, printed its numbers, then exited 2 on the figure's mkdir: a
refusal of the user's input after the work. The folder is now made before the measurement, which
does not run; one made for a measurement that is then refused goes again (found by a fuzz pass)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from catapult import cli
from tiny_run import tiny_config

FEW = ["--top-k", "1", "--trace-matvecs", "0", "--density-runs", "1", "--density-steps", "2",
       "--progress", "none", "--threads", "1"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where no folder can be made")
def test_a_plot_folder_that_cannot_be_made_is_refused_before_the_measurement(tmp_path, capsys, monkeypatch):
    import catapult.engine.spectrum_study as study

    config = tmp_path / "c.yaml"
    config.write_text(tiny_config("spectrum_folder"))
    calls = []
    measure = study.measure_spectrum
    monkeypatch.setattr(study, "measure_spectrum", lambda *a, **k: calls.append(1) or measure(*a, **k))
    unmakeable = Path("/proc") / f"catapult-test-{os.getpid()}" / "d.png"
    assert not unmakeable.parent.exists()
    code = cli.main(["spectrum", str(config), "--plot", str(unmakeable), *FEW])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith("catapult spectrum: error: "), captured.err
    assert str(unmakeable.parent) in captured.err
    # the OS's words alone ("[Errno 2] No such file or directory: '/proc/...'") named no option
    assert "--plot: cannot create the directory " in captured.err and "Errno" not in captured.err
    assert calls == [] and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
