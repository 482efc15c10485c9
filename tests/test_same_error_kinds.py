"""The other ranks' copy of a set-up step's failure (``engine.distributed._same_error``) for a
built-in exception whose constructor takes more than a message: UnicodeDecodeError (5 arguments),
ExceptionGroup (a message and a list). Before, building the copy raised ``TypeError: function takes
exactly 5 arguments (1 given)`` on every other rank, in place of the failure (a text shard that is not
UTF-8 read by rank 0's tokenisation reads so). Now the nearest built-in base that takes a message,
with the message: a ValueError kind for the Unicode errors, as on the failing rank."""
from __future__ import annotations

import pytest

from catapult.engine.distributed import _same_error


@pytest.mark.parametrize("kind, base", [("UnicodeDecodeError", UnicodeError), ("UnicodeEncodeError", UnicodeError),
                                        ("UnicodeTranslateError", UnicodeError), ("ExceptionGroup", Exception)])
def test_a_builtin_that_takes_more_than_a_message_is_its_nearest_base(kind, base):
    err = _same_error(1, kind, "'utf-8' codec can't decode byte 0xff in position 0", None)
    assert type(err) is base
    assert "UnicodeDecodeError" in str(err) or kind in str(err)
    assert "can't decode byte 0xff" in str(err)


def test_plain_builtins_keep_their_type_and_message():
    err = _same_error(1, "FileNotFoundError", "no such file: a.npy", None)
    assert type(err) is FileNotFoundError and str(err) == "no such file: a.npy"
    assert type(_same_error(1, "NotARealError", "x", None)) is RuntimeError


def test_a_missing_dependency_keeps_its_kind_and_the_command_lines_exit_code_2():
    """Rank 0 tokenises the text shards; without ``tokenizers`` it raises MissingDependency (the CLI's exit
    code 2 and its install line), but the other ranks' copy was a RuntimeError, which the CLI reports as a
    defect (its traceback raised again). Truth: ``cli.report`` of the original."""
    from catapult.cli import report
    from catapult.config import MissingDependency
    message = "data.tokenizer: bpe needs the Hugging Face 'tokenizers' package: pip install tokenizers"
    copy = _same_error(0, "MissingDependency", message, None)
    assert type(copy) is MissingDependency and str(copy) == message
    assert report("train-ddp", copy) == report("train-ddp", MissingDependency(message)) == 2
