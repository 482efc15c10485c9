"""``catapult``'s own dispatch (``catapult.cli.main`` and ``report``): what the command line leaves to
argparse, which exception becomes which exit code, and what the message says (mutation pass 24)."""
from __future__ import annotations

import pytest

from catapult import cli
from tiny_run import tiny_config


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config("tiny_dispatch"))
    return path


def test_an_unknown_option_with_a_value_is_argparses_unrecognized_argument(tiny, tmp_path, capsys):
    # CI1: "--bogus=1" after the config was taken for an override and refused as an unknown config
    # key "--bogus"; it is a command-line option argparse does not know
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", str(tiny), "--out", str(tmp_path / "run"), "--bogus=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus=1" in err and "unknown key" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["demo", "--workers", "1", "--out", "{out}", "seed=1"],
                                  ["export", "{out}.db", "--out", "{out}.csv", "seed=1"]])
def test_a_key_value_to_a_command_that_reads_no_config_is_unrecognized(tmp_path, capsys, argv):
    # CI2: a command without overrides given key=value: an AttributeError traceback from the parser
    with pytest.raises(SystemExit) as stop:
        cli.main([a.format(out=tmp_path / "x") for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: seed=1" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


class Probe:
    """A subcommand ``probe CONFIG [key=value ...] [--out DIR]`` whose handler records what it was
    given and then returns ``code`` or raises ``raises``: the dispatch's own behaviour, no work."""

    def __init__(self, code=0, raises=None):
        self.code, self.raises, self.seen = code, raises, []

    def register(self, subparsers):
        p = subparsers.add_parser("probe")
        cli.add_config_arguments(p)
        p.add_argument("--out")
        p.set_defaults(func=self.handle)

    def handle(self, args):
        self.seen.append((list(args.overrides), args.out))
        if self.raises is not None:
            raise self.raises
        return self.code


def test_overrides_before_and_after_an_option_are_all_taken():
    # CI3: the overrides argparse took (before --out) were replaced by those after it: `train cfg
    # train.steps=1 --out d seed=3` trained 2 steps (the config's) with seed 3, without a word
    probe = Probe()
    assert cli.main(["probe", "c.yaml", "a=1", "--out", "d", "b=2", "c.d=3"], commands=[probe]) == 0
    assert probe.seen == [(["a=1", "b=2", "c.d=3"], "d")]


def _errors(tmp_path):
    """``(exception, exit code, words on stderr)``: each kind ``catapult.cli.report`` knows, as the
    module docstring of ``catapult.cli`` lists them."""
    import errno
    import sqlite3

    from catapult.config import ConfigError, MissingDependency
    from catapult.curvature.difference import UnreliableDifferenceError
    from catapult.curvature.microbatch import MicroBatchRefused
    from catapult.engine.run_dir import ResultsKept, RunDirectoryError

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "config": (ConfigError([("optimizer.lr", "must be > 0")]), 2, "error: invalid config: optimizer.lr: must be > 0"),
        "option": (ConfigError([("--out", "an empty path")]), 2, "probe: error: --out: an empty path"),
        "missing": (MissingDependency("data.tokenizer: bpe needs tokenizers"), 2, "error: data.tokenizer: bpe needs"),
        "not found": (FileNotFoundError(errno.ENOENT, "No such file", "cfg.yaml"), 2, "No such file"),
        "run dir": (RunDirectoryError("runs/x holds an earlier run"), 2, "error: runs/x holds an earlier run"),
        "kept": (ResultsKept(tmp_path, "figure.png", ["model.pt"], OSError(errno.ENOSPC, "full")), 1, "figure.png"),
        "pipe": (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, ""),
        "os": (OSError(errno.ENOSPC, "No space left on device", "/out/metrics.csv"), 2,
               "error: /out/metrics.csv: No space left on device"),
        "exists": (FileExistsError(errno.EEXIST, "File exists", str(a_file)), 2,
                   f"error: {a_file} is a file where a directory is needed"),
        "sqlite open": (sqlite3.OperationalError("unable to open database file"), 2, "cannot be opened"),
        "sqlite readonly": (sqlite3.OperationalError("attempt to write a readonly database"), 2,
                            "the store cannot be written"),
        "sqlite locked": (sqlite3.OperationalError("database is locked"), 2, "stayed locked by another process"),
        "sqlite schema": (sqlite3.OperationalError("no such column: x"), 2, "the store is damaged (SQLite says"),
        "sqlite damaged": (sqlite3.DatabaseError("file is not a database"), 2, "the store is a damaged SQLite file"),
        "interrupt": (KeyboardInterrupt(), 130, "error: interrupted"),
        "memory": (MicroBatchRefused("the batch cannot be split", "memory"), 2,
                   "(in a config: eval.sharpness_memory: fast)"),
        "chunk": (MicroBatchRefused("the batch cannot be split", "chunk_size"), 2,
                  "(in a config: eval.sharpness_chunk_size: null)"),
        "difference": (UnreliableDifferenceError("no step agreed"), 1,
                       "no step agreed; or set eval.sharpness_hvp: double_backprop (exact products)"),
    }


KINDS = ["config", "option", "missing", "not found", "run dir", "kept", "pipe", "os", "exists", "sqlite open",
         "sqlite readonly", "sqlite locked", "sqlite schema", "sqlite damaged", "interrupt", "memory", "chunk",
         "difference"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_known_error_is_its_exit_code_and_one_line(tmp_path, capsys, kind):
    # CI5-CI27: the exit codes of the module docstring, each with its line (no traceback)
    err, code, words = _errors(tmp_path)[kind]
    try:
        got = cli.main(["probe", "c.yaml"], commands=[Probe(raises=err)])
    except KeyboardInterrupt:   # (not let through to pytest, which would stop the session)
        pytest.fail("Ctrl-C came out of catapult.cli.main as a KeyboardInterrupt, not exit code 130")
    assert got == code
    text = capsys.readouterr().err
    assert words in text and "Traceback" not in text
    if code == 141:
        assert text == ""   # the reader went away: nothing to say
    else:
        assert text.startswith("catapult probe: error: ") and text.count("\n") == 1


def test_a_handlers_exit_code_is_the_commands_and_no_command_is_2(capsys):
    # CI4, CI5: a handler's own exit code (1: a measurement it could not make) came back as 0
    assert cli.main(["probe", "c.yaml"], commands=[Probe(code=1)]) == 1
    assert cli.main(["probe", "c.yaml"], commands=[Probe(code=None)]) == 0
    assert cli.main([], commands=[Probe()]) == 2
    assert "usage: catapult" in capsys.readouterr().out


def test_an_error_of_no_known_kind_is_raised_with_its_traceback():
    with pytest.raises(ZeroDivisionError):
        cli.main(["probe", "c.yaml"], commands=[Probe(raises=ZeroDivisionError("a defect"))])


def test_a_long_message_is_cut_at_max_message(capsys):
    # CI26: a message quoting 10,000 characters of hostile input (a path) was printed whole
    from catapult.engine.run_dir import RunDirectoryError

    message = "x" * 10_000 + " is not a run directory"
    assert cli.main(["probe", "c.yaml"], commands=[Probe(raises=RunDirectoryError(message))]) == 2
    cut = message[:cli.MAX_MESSAGE] + f" ... ({len(message) - cli.MAX_MESSAGE:,} more characters)"
    assert capsys.readouterr().err == f"catapult probe: error: {cut}\n"
    assert cli.MAX_MESSAGE == 4000 and cut.endswith(" ... (6,023 more characters)")
