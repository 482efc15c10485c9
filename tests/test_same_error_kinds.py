"""The other ranks' copy of a set-up step's failure (``curvature.rank_errors.same_error``) for a
built-in exception whose constructor takes more than a message: UnicodeDecodeError (5 arguments),
ExceptionGroup (a message and a list). Before, building the copy raised ``TypeError: function takes
exactly 5 arguments (1 given)`` on every other rank, in place of the failure (a text shard that is not
UTF-8 read by rank 0's tokenisation reads so). Now the nearest built-in base that takes a message,
with the message: a ValueError kind for the Unicode errors, as on the failing rank."""
from __future__ import annotations

import pytest

from catapult.curvature.rank_errors import error_verdict, same_error


@pytest.mark.parametrize("kind, base", [("UnicodeDecodeError", UnicodeError), ("UnicodeEncodeError", UnicodeError),
                                        ("UnicodeTranslateError", UnicodeError), ("ExceptionGroup", Exception)])
def test_a_builtin_that_takes_more_than_a_message_is_its_nearest_base(kind, base):
    err = same_error(1, kind, "'utf-8' codec can't decode byte 0xff in position 0", None)
    assert type(err) is base
    assert "UnicodeDecodeError" in str(err) or kind in str(err)
    assert "can't decode byte 0xff" in str(err)


def test_plain_builtins_keep_their_type_and_message():
    err = same_error(1, "FileNotFoundError", "no such file: a.npy", None)
    assert type(err) is FileNotFoundError and str(err) == "no such file: a.npy"
    assert type(same_error(1, "NotARealError", "x", None)) is RuntimeError


def test_a_missing_dependency_keeps_its_kind_and_the_command_lines_exit_code_2():
    """Rank 0 tokenises the text shards; without ``tokenizers`` it raises MissingDependency (the CLI's exit
    code 2 and its install line), but the other ranks' copy was a RuntimeError, which the CLI reports as a
    defect (its traceback raised again). Truth: ``cli.report`` of the original."""
    from catapult.cli import report
    from catapult.config import MissingDependency
    message = "data.tokenizer: bpe needs the Hugging Face 'tokenizers' package: pip install tokenizers"
    copy = same_error(0, *error_verdict(MissingDependency(message)))
    assert type(copy) is MissingDependency and str(copy) == message
    assert report("train-ddp", copy) == report("train-ddp", MissingDependency(message)) == 2


def test_catapults_own_errors_reach_the_other_ranks_as_themselves():
    """Every kind of catapult's own that the command line ends with its exit code: the other ranks' copy
    was a RuntimeError (``rank 0: MicroBatchRefused: ...``), a defect's traceback there; the copy is now
    the same class with the same message and attributes. Truth: ``cli.report`` of the original, and its
    attributes."""
    from pathlib import PurePosixPath

    from catapult.cli import report
    from catapult.config import ConfigError
    from catapult.curvature.difference import UnreliableDifferenceError
    from catapult.curvature.microbatch import MicroBatchRefused
    from catapult.engine.run_dir import RunDirectoryError
    from catapult.sweep.store_errors import SpecChanged

    originals = [MicroBatchRefused("memory: a module couples the samples", "memory"),
                 UnreliableDifferenceError("finite-difference products are not reliable here"),
                 RunDirectoryError("runs/a holds an earlier run"),
                 ConfigError([("data.root", "no shards"), ("train.steps", "must be >= 1")]),
                 SpecChanged("s.db", ["lr: 1 -> 2"])]
    for original in originals:
        copy = same_error(0, *error_verdict(original))
        assert type(copy) is type(original) and str(copy) == str(original)
        if not isinstance(original, SpecChanged):   # (`catapult sweep` reports it itself)
            assert report("train-ddp", copy) == report("train-ddp", original)
    assert same_error(0, *error_verdict(originals[0])).option == "memory"
    assert same_error(0, *error_verdict(originals[3])).problems == originals[3].problems
    assert same_error(0, *error_verdict(originals[4])).changes == ["lr: 1 -> 2"]
    # a value JSON cannot encode comes as its repr, the problem kept (the CLI prints the problems)
    odd = same_error(0, *error_verdict(ConfigError([("data.root", PurePosixPath("/d/a.npy"))])))
    assert odd.problems == [("data.root", "PurePosixPath('/d/a.npy')")]


def test_a_class_outside_catapult_or_not_an_exception_is_not_imported():
    # the module a verdict names is imported only within the package, and only an exception class is built
    assert type(same_error(2, "Popen", "x", {"module": "subprocess", "attributes": {}})) is RuntimeError
    assert type(same_error(2, "ConfigError", "x", {"module": "catapult.nothing_here", "attributes": {}})) \
        is RuntimeError
    assert str(same_error(2, "validate", "x", {"module": "catapult.config", "attributes": {}})) == \
        "rank 2: validate: x"


@pytest.mark.parametrize("original", [OSError(28, "No space left on device", "/run/trajectories.png"),
                                      FileNotFoundError(2, "No such file or directory", "part0.npy"),
                                      PermissionError(13, "Permission denied"),
                                      OSError(5, "Input/output error"),
                                      # os.replace's two files (writing.write_whole renames a partial file)
                                      IsADirectoryError(21, "Is a directory", ".partial-model.pt", None, "model.pt")])
def test_an_os_error_keeps_its_errno_and_file_so_every_rank_prints_the_same_line(original):
    """Rank 0's full disk writing the run files (train-ddp's agreed step) printed
    "FILE: No space left on device" there and "[Errno 28] No space left on device: 'FILE'" on the
    other ranks: the copy was ``OSError(str(original))``, no errno, no filename (a rename's second
    file, ``filename2``, still made it one: "A: Is a directory" there, the errno's whole text on the
    others). Truth: the original's attributes and ``cli.report``'s line of the original."""
    import contextlib
    import io

    from catapult.cli import report
    copy = same_error(0, *error_verdict(original))
    assert type(copy) is type(original) and str(copy) == str(original)
    assert (copy.errno, copy.strerror, copy.filename, copy.filename2) == \
        (original.errno, original.strerror, original.filename, original.filename2)
    lines = []
    for err in (original, copy):
        with contextlib.redirect_stderr(io.StringIO()) as printed:
            assert report("train-ddp", err) == 2
        lines.append(printed.getvalue())
    assert lines[0] == lines[1]


def test_what_a_verdict_carries_of_a_catapult_error_is_its_public_attributes_within_the_bound():
    """Mutation pass 20 (RE3, RE5, RE6): a verdict carries a catapult error's public attributes only (not
    ``_private`` ones) and each as JSON of at most MAX_ATTRIBUTE_CHARS characters, that bound included: a
    string attribute's JSON is its length + 2 quotes."""
    from catapult.curvature.rank_errors import MAX_ATTRIBUTE_CHARS
    from catapult.engine.run_dir import RunDirectoryError

    err = RunDirectoryError("runs/a holds an earlier run")
    err._cache = "private"
    err.at_bound = "x" * (MAX_ATTRIBUTE_CHARS - 2)     # json.dumps: MAX_ATTRIBUTE_CHARS characters
    err.past_bound = "y" * (MAX_ATTRIBUTE_CHARS - 1)   # one more
    kind, message, details = error_verdict(err)
    assert (kind, message) == ("RunDirectoryError", "runs/a holds an earlier run")
    assert details == {"module": "catapult.engine.run_dir", "attributes": {"at_bound": err.at_bound}}
    copy = same_error(1, kind, message, details)
    assert type(copy) is RunDirectoryError and copy.at_bound == err.at_bound
    assert not hasattr(copy, "_cache") and not hasattr(copy, "past_bound")


def test_a_list_attribute_becomes_tuples_only_where_every_entry_is_a_list():
    """Mutation pass 20 (RE10): a ConfigError's problems (a list of lists in JSON) come back as tuples; a
    list mixing lists and other values comes back as it was sent (RE10 made ``"c"`` the tuple ``('c',)``)."""
    from catapult.engine.run_dir import RunDirectoryError

    err = RunDirectoryError("odd")
    err.mixed, err.pairs = [[1, 2], "c"], [["a", 1], ["b", 2]]
    copy = same_error(1, *error_verdict(err))
    assert copy.mixed == [[1, 2], "c"] and copy.pairs == [("a", 1), ("b", 2)]


def test_a_class_of_a_package_whose_name_starts_with_catapult_is_not_catapults_own():
    """Mutation pass 20 (RE2): only the package ``catapult`` is ours: an exception of a module
    ``catapultish.plugins`` carries no attributes (RE2 took any module name starting so) and reaches the
    others as a RuntimeError naming it."""
    class PluginError(Exception):
        pass
    PluginError.__module__, PluginError.__qualname__ = "catapultish.plugins", "PluginError"
    err = PluginError("bad plugin")
    err.secret = "not sent"
    assert error_verdict(err) == ["PluginError", "bad plugin", None]
    assert str(same_error(1, *error_verdict(err))) == "rank 1: PluginError: bad plugin"


@pytest.mark.parametrize("original", [OSError("the disk went away"), OSError(2, "No such file", b"part0.npy"),
                                      FileNotFoundError(2, "No such file or directory", "a.npy", None, "b.npy")])
def test_an_os_error_whose_parts_cannot_make_the_same_line_travels_as_its_line(original):
    """Mutation pass 20 (RE7, RE8, RE13): an OSError without errno/strerror carries no parts (RE7 sent
    [None, None, None]); a bytes filename is left out of the parts, so the verdict stays JSON (RE8 sent the
    bytes: json.dumps raised on that rank alone); a second filename (os.rename's 'a' -> 'b') travels after
    them and the copy prints the same line (RE13 returned a line without '-> b').
    Truth: the original's str and type, through a JSON round trip as between ranks."""
    import json

    verdict = json.loads(json.dumps(error_verdict(original)))
    copy = same_error(0, *verdict)
    assert type(copy) is type(original) and str(copy) == str(original)
    if original.errno is None:
        assert verdict[2] is None
    else:
        assert verdict[2] == {"os_error": [original.errno, original.strerror,
                                           original.filename if isinstance(original.filename, str) else None]
                              + ([original.filename2] if original.filename2 is not None else [])}


@pytest.mark.parametrize("message, key", [("'x'", "x"), ("(1, 'b')", (1, "b")), ("0x10", None), ("1.00", None),
                                          ("<object at 0x1>", None)])
def test_a_key_errors_copy_prints_the_line_the_failing_rank_printed(message, key):
    """Mutation pass 20 (RE20): a KeyError's message is its key's repr; the copy is a KeyError of that key
    only where the message is the key's own repr ('x', a tuple), else one printing the message as sent: a
    message '0x10' (a key whose repr reads so) is not the key 16, printed '16' (RE20 took any literal)."""
    copy = same_error(1, "KeyError", message)
    assert isinstance(copy, KeyError) and str(copy) == message
    if key is not None:
        assert copy.args == (key,)


def test_a_nested_exception_class_of_catapult_is_found_by_its_qualified_name(monkeypatch):
    """Mutation pass 20 (RE23): a verdict names a class by its ``__qualname__`` (``Outer.Inner`` for a class
    nested in another); the copy is that class, found part by part (RE23 looked up 'Outer.Inner' as one
    attribute: a RuntimeError 'rank 1: Outer.Inner: ...')."""
    import catapult.engine.run_dir as run_dir

    class Outer:
        class Inner(Exception):
            pass
    Outer.__module__ = Outer.Inner.__module__ = "catapult.engine.run_dir"
    Outer.__qualname__, Outer.Inner.__qualname__ = "Outer", "Outer.Inner"
    monkeypatch.setattr(run_dir, "Outer", Outer, raising=False)
    err = Outer.Inner("nested")
    err.option = "memory"
    copy = same_error(1, *error_verdict(err))
    assert type(copy) is Outer.Inner and str(copy) == "nested" and copy.option == "memory"


def test_a_verdict_naming_a_module_outside_catapult_or_a_class_it_only_imports_builds_no_such_class():
    """Mutation pass 20 (RE18, RE19): a verdict's module is imported only within the package (RE18 imported
    smtplib for SMTPException and built one), and only a class defined in the module named is built, not one
    it imports (catapult.config re-exports ConfigError, defined in catapult.config.errors; RE19 built it):
    either way a RuntimeError naming the kind and the rank."""
    import sys

    had_smtplib = "smtplib" in sys.modules
    err = same_error(2, "SMTPException", "x", {"module": "smtplib", "attributes": {}})
    assert type(err) is RuntimeError and str(err) == "rank 2: SMTPException: x"
    assert ("smtplib" in sys.modules) == had_smtplib
    err = same_error(2, "ConfigError", "x", {"module": "catapult.config", "attributes": {}})
    assert type(err) is RuntimeError and str(err) == "rank 2: ConfigError: x"


def test_write_errors_named_leaves_an_error_that_names_its_own_file_as_it_is():
    # Mutation pass 22c (WR4): only a nameless OSError (a full disk) is given the path; one naming
    # another file keeps its kind and its name
    from catapult.writing import write_errors_named

    raised = FileNotFoundError(2, "No such file or directory", "runs/a/.partial-metrics.csv")
    with pytest.raises(FileNotFoundError) as caught:
        with write_errors_named("runs/a/metrics.csv"):
            raise raised
    assert caught.value is raised and caught.value.filename == "runs/a/.partial-metrics.csv"
    with pytest.raises(OSError) as nameless:
        with write_errors_named("runs/a/metrics.csv"):
            raise OSError(28, "No space left on device")
    assert (nameless.value.errno, nameless.value.filename) == (28, "runs/a/metrics.csv")
