"""``catapult.writing.write_whole``: a file appears whole or not at all, and what already sits at
its ``.partial-NAME`` is never written through."""
from __future__ import annotations

import pytest

from catapult import writing
from catapult.writing import write_whole


def _by_path(monkeypatch, on: bool) -> None:
    """Run write_whole the way it runs without flock or folder-relative calls (Windows)."""
    monkeypatch.setattr(writing, "_BY_FOLDER", not on)


@pytest.mark.parametrize("by_path", [False, True])
def test_a_link_planted_at_the_partial_name_is_not_written_through(tmp_path, monkeypatch, by_path):
    _by_path(monkeypatch, by_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".partial-a.txt").symlink_to(victim)
    write_whole(tmp_path / "out" / "a.txt", lambda fh: fh.write(b"whole"))
    assert victim.read_text() == "keep me"
    assert (tmp_path / "out" / "a.txt").read_text() == "whole"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]


@pytest.mark.parametrize("by_path", [False, True])
def test_a_stale_partial_file_is_replaced(tmp_path, monkeypatch, by_path):
    _by_path(monkeypatch, by_path)
    (tmp_path / ".partial-a.txt").write_text("half of an earlier wri")
    write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    assert (tmp_path / "a.txt").read_text() == "whole"
    assert not (tmp_path / ".partial-a.txt").exists()


@pytest.mark.parametrize("by_path", [False, True])
def test_a_folder_at_the_partial_name_is_reported_under_the_real_name_and_left_alone(tmp_path, monkeypatch, by_path):
    _by_path(monkeypatch, by_path)
    (tmp_path / ".partial-a.txt").mkdir()
    (tmp_path / ".partial-a.txt" / "inside").write_text("x")
    with pytest.raises(OSError) as info:
        write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    assert info.value.filename == str(tmp_path / "a.txt")   # not a cleanup error masking it
    assert (tmp_path / ".partial-a.txt" / "inside").read_text() == "x"
    assert not (tmp_path / "a.txt").exists()


@pytest.mark.parametrize("by_path", [False, True])
def test_a_failed_write_leaves_neither_file(tmp_path, monkeypatch, by_path):
    _by_path(monkeypatch, by_path)
    def half(fh):
        fh.write(b"half")
        raise ValueError("stopped")
    (tmp_path / "a.txt").write_text("before")
    with pytest.raises(ValueError, match="stopped"):
        write_whole(tmp_path / "a.txt", half)
    assert (tmp_path / "a.txt").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("by_path", [False, True])
def test_a_fifo_planted_at_the_partial_name_does_not_block_the_write(tmp_path, monkeypatch, by_path):
    _by_path(monkeypatch, by_path)
    import os
    import threading

    os.mkfifo(tmp_path / ".partial-a.txt")
    writer = threading.Thread(target=write_whole, args=(tmp_path / "a.txt", lambda fh: fh.write(b"whole")),
                              daemon=True)
    writer.start()
    writer.join(timeout=20)
    if writer.is_alive():   # release the blocked open() so the test ends
        with open(tmp_path / ".partial-a.txt", "rb"):
            pass
        pytest.fail("write_whole blocked on a FIFO at the partial name")
    assert (tmp_path / "a.txt").read_text() == "whole"


def test_a_link_planted_again_right_after_its_removal_is_never_written_through(tmp_path, monkeypatch):
    # the race a review won 1,828 times in 3,000: the partial name was removed, a link planted
    # there at once, and the write then followed it into the link's target
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    partial = out / ".partial-a.txt"
    partial.symlink_to(victim)
    unlink = os.unlink

    def unlink_and_plant(name, *args, **kwargs):   # the other side wins every race
        unlink(name, *args, **kwargs)
        os.symlink(victim, partial)
    monkeypatch.setattr(os, "unlink", unlink_and_plant)
    with pytest.raises(OSError, match="reappeared") as info:
        write_whole(out / "a.txt", lambda fh: fh.write(b"whole"))
    monkeypatch.undo()
    assert info.value.filename == str(out / "a.txt")
    assert victim.read_text() == "keep me"
    assert not (out / "a.txt").exists()


def test_a_link_planted_once_after_the_removal_is_removed_too(tmp_path, monkeypatch):
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".partial-a.txt").write_text("an earlier write's leftover")
    unlink, planted = os.unlink, []

    def unlink_and_plant_once(name, *args, **kwargs):
        unlink(name, *args, **kwargs)
        if not planted:
            planted.append(os.symlink(victim, tmp_path / ".partial-a.txt"))
    monkeypatch.setattr(os, "unlink", unlink_and_plant_once)
    write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    monkeypatch.undo()
    assert victim.read_text() == "keep me" and (tmp_path / "a.txt").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "victim.txt"]


@pytest.mark.parametrize("name", ["fig.pdf", "fig.png"])
def test_a_figure_stopped_mid_save_leaves_no_file(tmp_path, name):
    # the PDF backend writes as it draws: a stopped save left a truncated figure under the name
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure

    from catapult.files import save_figure

    class Stop(Artist):
        def draw(self, renderer):
            raise KeyboardInterrupt

    fig = Figure()
    fig.subplots().plot([1, 2])
    fig.add_artist(Stop())
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_another_process_is_writing_is_left_to_it(tmp_path):
    # two writers of one path: the second removed the first's partial file and wrote its own,
    # and the first then renamed the second's half-written file over the real name
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'half'); print('locked', flush=True)\n"
        "sys.stdin.read()\n"), str(tmp_path / ".partial-a.txt")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(OSError, match="another process is writing it") as info:
            write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
        assert info.value.filename == str(tmp_path / "a.txt")
        assert (tmp_path / ".partial-a.txt").read_bytes() == b"half" and not (tmp_path / "a.txt").exists()
    finally:
        holder.communicate(b"", timeout=30)   # the writer stops: its file is now a leftover
    write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_partial_file_replaced_while_written_is_not_renamed_over_the_output(tmp_path):
    import os

    def replaced(fh):
        fh.write(b"whole")
        os.unlink(tmp_path / ".partial-a.txt")
        (tmp_path / ".partial-a.txt").write_bytes(b"someone else's half")
    with pytest.raises(OSError, match="replaced while it was written"):
        write_whole(tmp_path / "a.txt", replaced)
    assert not (tmp_path / "a.txt").exists()
    assert (tmp_path / ".partial-a.txt").read_bytes() == b"someone else's half"   # not ours to remove


def test_the_module_imports_and_writes_whole_without_fcntl(tmp_path, monkeypatch):
    # catapult.files (where write_whole was) imported fcntl unconditionally: no figure, export
    # or run could be written on a system without it (Windows)
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)   # import fcntl now raises ImportError
    spec = importlib.util.spec_from_file_location("writing_without_fcntl", writing.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.fcntl is None and module._BY_FOLDER is False
    (tmp_path / ".partial-a.txt").symlink_to(tmp_path / "victim")
    module.write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    assert (tmp_path / "a.txt").read_text() == "whole" and not (tmp_path / "victim").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("by_path", [False, True])
def test_an_error_without_a_file_name_while_writing_names_the_output(tmp_path, monkeypatch, by_path):
    # a full disk raises OSError(ENOSPC) with no file name from fh.write: the error names the
    # file the user asked for (not the .partial- one, nor none), and leaves neither file
    import errno
    import os

    _by_path(monkeypatch, by_path)

    def full(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        write_whole(tmp_path / "a.txt", full)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "a.txt"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("by_path", [False, True])
def test_a_failed_rename_over_a_folder_names_the_path_not_the_partial_file(tmp_path, monkeypatch, by_path):
    # Mutation pass 22c (WR11): os.replace names .partial-a.txt (and a.txt second); the error
    # reported names a.txt, what the user asked for, and the partial file is gone
    _by_path(monkeypatch, by_path)
    (tmp_path / "a.txt").mkdir()
    (tmp_path / "a.txt" / "mine").write_text("keep")
    with pytest.raises(OSError) as caught:
        write_whole(tmp_path / "a.txt", lambda fh: fh.write(b"whole"))
    assert caught.value.filename == str(tmp_path / "a.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt" / "mine").read_text() == "keep"
