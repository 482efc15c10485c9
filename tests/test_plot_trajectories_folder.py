"""``catapult plot`` whose --trajectories-out folder cannot be made (a folder under /proc here; no
permission elsewhere) wrote the heatmap, printed 'wrote h.png', then failed making that folder: exit 2
with the heatmap left behind (a refused command writes nothing). Both folders are now made before
the heatmap is written (found by a fuzz pass over the store commands' flags)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from catapult import cli

LEGACY = Path(__file__).parent / "data" / "store_v0.1.0.db"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where no folder can be made")
def test_a_trajectories_folder_that_cannot_be_made_leaves_no_heatmap(tmp_path, capsys):
    store = tmp_path / "s.db"
    store.write_bytes(LEGACY.read_bytes())
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    unmakeable = Path("/proc") / f"catapult-test-{os.getpid()}" / "t.png"
    assert not unmakeable.parent.exists()
    code = cli.main(["plot", str(store), "--out", str(tmp_path / "h.png"), "--trajectories-out", str(unmakeable)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("catapult plot: error: ") and str(unmakeable.parent) in captured.err
    assert "wrote" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where no folder can be made")
@pytest.mark.parametrize("command, option, name", [("export", "--out", "cells.csv"), ("plot", "--out", "h.png"),
                                                   ("plot", "--trajectories-out", "t.png")])
def test_a_folder_that_cannot_be_made_is_refused_naming_the_option_the_user_gave(tmp_path, capsys, command, option, name):
    # the OS's words alone ("[Errno 2] No such file or directory: '/proc/...'") named no option
    store = tmp_path / "s.db"
    store.write_bytes(LEGACY.read_bytes())
    unmakeable = Path("/proc") / f"catapult-test-{os.getpid()}" / name
    argv = [command, str(store), option, str(unmakeable)] + (["--out", str(tmp_path / "h.png")]
                                                             if option == "--trajectories-out" else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"catapult {command}: error: ") and \
        f"{option}: cannot create the directory {unmakeable.parent} for {unmakeable}: " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
