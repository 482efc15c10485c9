"""``catapult export --format parquet`` of a sweep whose seeds reach 2^63 (a seed torch takes: it
accepts seeds below 2^64, and the config bounds none) was pyarrow's OverflowError traceback ("Python
int too large to convert to C long"); the CSV wrote the seed exactly. Such a column is now unsigned
64-bit, and one beyond that (a config seed of 2^64 + 5) each number's exact text, as in the CSV."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun

pq = pytest.importorskip("pyarrow.parquet")


@pytest.mark.parametrize("big, kind", [(2 ** 63, "uint64"), (2 ** 64 - 1, "uint64"), (2 ** 64 + 5, "string")])
def test_a_seed_beyond_int64_is_exported_exactly(tmp_path, capsys, big, kind):
    config = cfg.validate({"name": "t", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2]}, "seeds": [0, big]})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    out = tmp_path / "cells.parquet"
    assert cli.main(["export", str(store), "--out", str(out)]) == 0, capsys.readouterr().err
    table = pq.read_table(out)
    assert str(table.schema.field("seed").type) == kind
    want = [0, big, 0, big]   # lr 0.1 seeds 0 and big, then lr 0.2
    assert table.column("seed").to_pylist() == (want if kind == "uint64" else [str(s) for s in want])
    assert table.column("optimizer.lr").to_pylist() == [0.1, 0.1, 0.2, 0.2]
