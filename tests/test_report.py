"""The HTML report: self-contained (no network references), figures embedded, table complete."""
from __future__ import annotations

import base64
import html.parser

from catapult import config as cfg
from catapult.report import write_report
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.rows = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "data", "action", "poster"):
                self.refs.append(value)
        if tag == "tr":
            self.rows += 1


def test_report_is_one_self_contained_page(tmp_path):
    config = cfg.validate({"name": "r", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-3, 0]},
                                 "schedule.warmup_steps": [1, 8], "schedule.lr_init": [0.0, 0.5]}})
    run_sweep(config, spec, tmp_path / "s.db", run_fn=FakeRun(diverge_above=1.0, fail_lr_init=0.5),
              lambda0_fn=lambda c: 2.0, progress="none")
    out = write_report(tmp_path / "s.db", tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    page = _Collect()
    page.feed(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.refs, "the figures should be embedded images"
    for ref in page.refs:
        assert not ref.lower().startswith(("http:", "https:", "//", "file:")), ref
        assert ref.startswith("data:image/png;base64,"), ref[:40]
        assert base64.b64decode(ref.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in text and "https://" not in text and "url(" not in text
    # one table row per cell (+ header) in the results table, and the lambda_0 table
    assert page.rows >= 16 + 1
    assert text.count("<tr class='failed'>") == 8 and "injected failure" in text
    assert "<tr class='diverged'>" in text
    # the spec is there in the config's own units
    assert "log2_over_lambda0" in text and "warmup_steps" in text and "2^-3/λ0" in text


def test_results_table_labels_values_the_config_normalized_as_the_grid_does(tmp_path):
    # optimizer.lr: {log2: [-1, 1]} writes 1 and 2, the cells store 1.0 and 2.0: their rows read
    # "1.0" and "2.0" beside "2^-1"
    import re

    spec = parse_sweep({"grid": {"optimizer.lr": {"log2": [-1, 1]}}})
    run_sweep(cfg.validate({"name": "p", "train": {"steps": 3}}), spec, tmp_path / "s.db",
              run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    page = write_report(tmp_path / "s.db").read_text()
    results = page[page.index("<h2>Results</h2>"):]
    assert re.findall(r"<tr class='[a-z]*'><td>\d+</td><td class='text'>([^<]*)</td>", results) == ["2^-1", "2^0", "2^1"]


def test_the_over_seeds_table_labels_values_as_the_results_table_does(tmp_path):
    # the results table read "2^-3", the over-seeds table the stored 0.125 for the same lr
    import re

    spec = parse_sweep({"grid": {"optimizer.lr": ["2^-3", 1.0]}, "seeds": 2})
    run_sweep(cfg.validate({"name": "p", "train": {"steps": 3}}), spec, tmp_path / "s.db",
              run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    page = write_report(tmp_path / "s.db").read_text()
    results = page[page.index("<h2>Results</h2>"):]
    seeds = page[page.index("Over seeds"):]
    seeds = seeds[:seeds.index("</table>")]
    labels = re.findall(r"<tr class='[a-z]*'><td>\d+</td><td class='text'>([^<]*)</td>", results)
    assert labels == ["2^-3", "2^-3", "1", "1"]   # lr slowest, then the two seeds
    assert re.findall(r"<tr><td class='text'>([^<]*)</td>", seeds) == ["2^-3", "1"]
