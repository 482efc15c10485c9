"""Which existing files catapult takes for its own (:mod:`catapult.files`), judged by content on
hand-written files: an export CSV's header (``cell_id`` first, with ``status``), a report (an HTML
document that carries the mark), each checked against a near miss a user could have written."""
from __future__ import annotations

import pytest

from catapult.files import MARK, written_by_catapult


@pytest.mark.parametrize("header, ours", [
    ("cell_id,optimizer.lr,status", True),
    ("optimizer.lr,n_seeds,status", True),      # the aggregate's
    ("cell_id,optimizer.lr", False),             # no status: a user's table (mutation pass 22, FI2)
    ("n_seeds,optimizer.lr", False),
    ("optimizer.lr,cell_id,status", False),      # cell_id not first (FI3)
])
def test_an_export_csv_is_known_by_cell_id_first_or_n_seeds_with_status(tmp_path, header, ours):
    path = tmp_path / "cells.csv"
    path.write_text(header + "\n0.1,0,finished\n")
    assert written_by_catapult(path) is ours


@pytest.mark.parametrize("text, ours", [
    (f"<!DOCTYPE html>\n<html><head><meta name=\"generator\" content=\"{MARK}\"></head></html>", True),
    (f"  \n<!doctype HTML><html><meta name=\"generator\" content=\"{MARK}\"></html>", True),
    (f"<svg xmlns=\"http://www.w3.org/2000/svg\"><!-- {MARK} --></svg>", False),   # a marked figure, not a report (FI5)
    ("<!DOCTYPE html>\n<html><body>a user's page</body></html>", False),
    # the mark in a user's text, not as the page's generator: the report replaced the page
    (f"<!DOCTYPE html>\n<html><body><p>The figures below were {MARK}.</p></body></html>", False),
    (f"<!DOCTYPE html><html><head><title>notes</title></head><body><meta name='generator' content='{MARK}'></body>", False),
])
def test_a_report_is_an_html_document_that_carries_the_mark(tmp_path, text, ours):
    path = tmp_path / "report.html"
    path.write_text(text)
    assert written_by_catapult(path) is ours


def test_a_file_is_judged_as_the_format_a_command_writes_there(tmp_path):
    # export --format csv --out results.txt (FI7): its header, not its suffix, decides
    path = tmp_path / "results.txt"
    path.write_text("cell_id,optimizer.lr,status\n0,0.1,finished\n")
    assert written_by_catapult(path, as_suffix=".csv") is True
    assert written_by_catapult(path) is False   # as text: no mark in it


def test_a_cut_off_last_line_is_a_mapping_only_where_it_starts_a_key_allowed_next():
    # Mutation pass 22 (FI17)
    from catapult.files import cut_off_mapping

    keys = ["name", "data", "model"]
    assert cut_off_mapping(b"name: a\nda", keys) is True
    assert cut_off_mapping(b"name: a\nxyz", keys) is False
    assert cut_off_mapping(b"name: a\nna", keys, skips=False) is False   # name again: not next


def test_only_a_file_under_the_partial_prefix_is_a_stopped_writes_partial(tmp_path):
    # Mutation pass 22 (FI20): a whole file under its real name is no partial file
    from catapult.files import PARTIAL_PREFIX, partial_of_ours

    for name in ("metrics.csv", PARTIAL_PREFIX + "metrics.csv"):
        (tmp_path / name).write_text("step,train_loss\n")
    # not written whole, but all of it the start of what the command writes there (any name)
    whole, start = (lambda entry, name: False), (lambda name: b"step,train_loss\n")
    assert partial_of_ours(tmp_path / (PARTIAL_PREFIX + "metrics.csv"), whole, start) is True
    assert partial_of_ours(tmp_path / "metrics.csv", whole, start) is False


def test_an_earlier_versions_trajectories_png_is_a_png_with_matplotlibs_tag(tmp_path):
    # Mutation pass 22 (FI11): the tag alone, in a file that is no PNG, is a user's file
    from catapult.files import PNG_START, run_output_of_ours

    tag = b"tEXtSoftware\x00Matplotlib version3.8.0"
    (tmp_path / "trajectories.png").write_bytes(PNG_START + b"\x00\x00\x00\x19" + tag)
    assert run_output_of_ours(tmp_path / "trajectories.png") is True
    (tmp_path / "trajectories.png").write_bytes(b"my notes: " + tag)
    assert run_output_of_ours(tmp_path / "trajectories.png") is False


def test_a_figure_path_without_a_suffix_is_marked_as_the_png_matplotlib_writes():
    # Mutation pass 22c (FI1): savefig('phase') writes PNG, so it carries PNG's mark
    from catapult.files import MARK, figure_mark

    assert figure_mark("out/phase") == figure_mark("phase.PNG") == {"metadata": {"Software": MARK}}


def test_a_parquet_file_is_ours_only_where_its_catapult_metadata_is_the_mark(tmp_path):
    # Mutation pass 22c (FI4): a user's table that has a 'catapult' key of its own is not an export
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"cell_id": [0], "status": ["converged"]})
    for value, ours in ((MARK.encode(), True), (b"my notes on the catapult phase", False), (b"", False)):
        path = tmp_path / f"t{len(value)}.parquet"
        pq.write_table(table.replace_schema_metadata({b"catapult": value}), path)
        assert written_by_catapult(path) is ours


def test_a_line_without_a_colon_before_the_last_is_no_cut_off_mapping():
    # Mutation pass 22c (FI16): only the last line may be cut inside a key
    from catapult.files import cut_off_mapping

    keys = ["name", "data", "model"]
    assert cut_off_mapping(b"name: a\nda", keys) is True
    assert cut_off_mapping(b"name: a\nda\nmodel: {}\n", keys) is False


def test_a_link_to_an_export_is_not_taken_for_catapults_own(tmp_path):
    # Mutation pass 22c (FI21): judged by content, but never through a link
    target = tmp_path / "results.csv"
    target.write_text("cell_id,optimizer.lr,status\n0,0.1,converged\n")
    (tmp_path / "link.csv").symlink_to(target)
    assert written_by_catapult(target) is True and written_by_catapult(tmp_path / "link.csv") is False


USERS_TEXT_FIGURES = {   # a user's own files whose text says "written by catapult" (none in its metadata)
    "svg": f'<svg xmlns="http://www.w3.org/2000/svg"><text x="5" y="30">figures {MARK}</text></svg>\n'.encode(),
    "ps": f"%!PS-Adobe-3.0\n%%Title: my poster\n% figures {MARK}\nshowpage\n".encode(),
    "eps": f"%!PS-Adobe-3.0 EPSF-3.0\n%%Creator: Inkscape\n% {MARK}\n".encode(),
    "pdf": f"%PDF-1.4\n1 0 obj << /Length 40 >> stream\nBT ({MARK}) Tj ET\nendstream endobj\n".encode(),
}


@pytest.mark.parametrize("suffix", ["svg", "svgz", "ps", "eps", "pdf"])
def test_a_text_figure_is_ours_by_its_creator_not_by_the_mark_in_its_text(tmp_path, suffix):
    # the mark anywhere in the file made it ours: `plot --out diagram.svg` replaced a user's diagram
    # captioned "figures written by catapult", `transfer --out poster.ps` a poster that said so
    import gzip

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from catapult.files import figure_mark

    drawn = tmp_path / f"drawn.{suffix}"
    fig = Figure()
    FigureCanvasAgg(fig)
    fig.savefig(drawn, **figure_mark(drawn))
    mine = tmp_path / f"mine.{suffix}"
    text = USERS_TEXT_FIGURES["svg" if suffix == "svgz" else suffix]
    mine.write_bytes(gzip.compress(text) if suffix == "svgz" else text)
    assert written_by_catapult(drawn) is True
    assert written_by_catapult(mine) is False
