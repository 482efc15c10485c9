"""Every file under bench/ that bench/RESULTS.md names exists as named: a reader who opens
``bench/figures/spectrum_fcn.png`` or ``fig3_mupce_outx8_T1.csv`` found nothing (the script
suffixes the first ``_hessian`` / ``_ggn``; the second is kept gzipped). A name that is not a kept
file passes only where its line (or the two after) says so, in the words listed here."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINES = (ROOT / "bench" / "RESULTS.md").read_text().splitlines()
NAMED = re.compile(r"\bbench/[\w./*-]*\w\.(?:csv\.gz|png|csv|txt|jsonl|json|svg|pdf|md|py)\b")
#: names that are not kept files, and the words beside them that say so
NOT_KEPT = {
    "bench/figures/fig1_search.csv": "before writing the CSV",       # the run timed out first
    "bench/figures/spectrum_fcn.png": "suffixed",                   # the script writes _hessian / _ggn
    "bench/supar_ablation_width/wW_lr.json": "model.width=W",       # W: the width, a template
    "bench/supar_ablation_width/wW_abl.json": "model.width=W",
}


def _missing() -> list[str]:
    out = []
    for i, line in enumerate(LINES):
        near = " ".join(LINES[i:i + 3])
        for name in NAMED.findall(line):
            if any(ROOT.glob(name)):
                continue
            if name in NOT_KEPT and NOT_KEPT[name] in near:
                continue
            if any(ROOT.glob(name + ".gz")) and "stored .gz" in near:
                continue
            out.append(f"line {i + 1}: {name}")
    return out


def test_results_names_files_that_exist():
    assert len([n for line in LINES for n in NAMED.findall(line)]) > 100   # the pattern finds the names
    assert _missing() == []


def test_the_check_finds_a_missing_name():
    LINES.append("    python bench/bench_peers.py --spectrum-figure bench/figures/no_such_file.png")
    try:
        assert _missing() == [f"line {len(LINES)}: bench/figures/no_such_file.png"]
    finally:
        LINES.pop()
