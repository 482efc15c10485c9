"""Every script in bench/ answers ``--help`` with its usage and exit code 0, without starting its
run: a reader checks a recorded command's flags that way (bench/RESULTS.md). Run in this process
with ``runpy`` (one torch import for all); scripts whose peers (the ``bench`` extra) are not
installed are skipped."""
from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))
PEERS = ("hessian_eigenthings", "curvlinops", "scipy")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_help(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(BENCH / script), run_name="__main__")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in PEERS:
            pytest.skip(f"{err.name} (the bench extra) is not installed")
        raise
    finally:
        torch.set_num_threads(threads)
    assert exit_.value.code in (0, None)
    assert "usage:" in out.getvalue()


def test_the_bench_folder_has_scripts():
    assert len(SCRIPTS) >= 30
