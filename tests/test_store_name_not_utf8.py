"""A store path whose name is not UTF-8 (a byte 0xff in a Linux file name, or a folder so named
above it): SQLite takes UTF-8 file names, and every store command ended in a UnicodeEncodeError
traceback (exit 1) -- `export`, `plot`, `transfer`, `report` and `sweep` alike, the last for a new
store too. Each now refuses it (exit 2) naming the path, and leaves the file as it was."""
from __future__ import annotations

import hashlib
import os

import pytest

from catapult.cli import main
from catapult.sweep.store import Store, StoreError
from tiny_run import two_cell_grid


def _named(folder, raw: bytes):
    """``folder / raw`` as the command line gives it (undecodable bytes as surrogates); skip where
    the file system refuses such a name (macOS, Windows)."""
    path = os.path.join(os.fsencode(folder), raw)
    try:
        with open(path, "wb"):
            pass
        os.remove(path)
    except (OSError, ValueError):
        pytest.skip("this file system takes UTF-8 names only")
    return os.fsdecode(path)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    config = folder / "grid.yaml"
    config.write_text(two_cell_grid())
    assert main(["sweep", str(config), "--store", str(folder / "s.db"), "--threads", "1"]) == 0
    return folder, config


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("command", [["export", "--out", "OUT.csv"], ["plot", "--out", "OUT.png"],
                                     ["transfer", "--out", "OUT.png"], ["report", "--out", "OUT.html"]])
@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_reader_refuses_a_store_whose_name_is_not_utf8(made, capsys, command, where):
    folder, _ = made
    if where == "file":
        store = _named(folder, b"\xff" + command[0].encode() + b".db")
    else:
        inside = _named(folder, b"\xfe" + command[0].encode())
        os.mkdir(inside)
        store = os.path.join(inside, "s.db")
    with open(folder / "s.db", "rb") as src, open(store, "wb") as dst:
        dst.write(src.read())
    before, beside = _digest(store), sorted(os.listdir(os.path.dirname(store)))
    out = str(folder / command[2])
    assert main([command[0], store, command[1], out]) == 2
    err = capsys.readouterr().err
    assert "is no name SQLite can open a store by: it is not UTF-8" in err and "Traceback" not in err
    assert ("\\xff" if where == "file" else "\\xfe") in err   # the path, its odd byte as text
    assert _digest(store) == before and sorted(os.listdir(os.path.dirname(store))) == beside   # no -wal, no -shm
    assert not os.path.exists(out)


def test_sweep_refuses_a_new_store_so_named_and_makes_nothing(made, capsys):
    folder, config = made
    inside = _named(folder, b"\xfdsweep")
    store = os.path.join(inside, "new.db")
    assert main(["sweep", str(config), "--store", store, "--threads", "1"]) == 2
    assert "is no name SQLite can open a store by: it is not UTF-8" in capsys.readouterr().err
    assert not os.path.exists(inside)
    with pytest.raises(StoreError, match="not UTF-8"):
        Store(store)
    assert not os.path.exists(inside)
