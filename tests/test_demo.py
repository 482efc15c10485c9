"""``catapult demo`` regenerates its own run directories: a second ``make demo`` must not stop at
the "existing run directory" guard that protects ``catapult train`` outputs; a directory it did
not write is refused before any work."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from catapult import cli
from catapult import demo as demo_module
from catapult.demo import _run_one


def test_a_demo_run_writes_over_its_own_earlier_output(tmp_path):
    config = {"name": "tiny", "data": {"name": "digits", "n_train": 32, "n_test": 16},
              "model": {"name": "mlp", "width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.1},
              "train": {"steps": 2}, "eval": {"sharpness_every": 0}}
    out = tmp_path / "tiny"
    first = _run_one(config, str(out))
    second = _run_one(config, str(out))
    assert first[1]["final_train_loss"] == second[1]["final_train_loss"]
    assert sorted(p.name for p in out.iterdir()) == [".catapult-run.json", "config.yaml", "metrics.csv", "model.pt",
                                                     "summary.json", "trajectories.png"]


RUN = {"config.yaml": b"name: fig1_sp_T1\n", "metrics.csv": b"step,train_loss\n0,1.0\n",
       "summary.json": b'{"status": "finished", "steps_completed": 1}'}
TITLE = b"# Warmup mechanisms (warmup paper, Fig. 1) in miniature"   # report.md's first line
FIGURE = b"\x89PNG\r\n\x1a\n...tEXtSoftware\x00written by catapult..."   # savefig's mark, as in the file


@pytest.mark.parametrize("entries, ours", [
    ({}, True),
    ({"fig1_sp_T1": RUN, "fig1_sp.png": FIGURE, "report.md": TITLE + b"\n"}, True),
    ({"fig1_sp_T1": {"config.yaml": RUN["config.yaml"], "metrics.csv": b"step,train_loss\n"}}, True),  # stopped
    ({"report.md": b"my notes"}, False),                                          # no run of the demo
    ({"fig1_sp_T1": RUN, "notes.txt": b"mine"}, False),
    ({"config.yaml": b"name: x\n", "metrics.csv": b"step\n"}, False),             # a train run
    # judged by content, not by name: a user's files under the demo's names, an empty folder of
    # a run's name, a run's folder holding the user's config (it was refused after 7 runs)
    ({"fig1_sp_T1": RUN, "report.md": b"# my own report\n"}, False),
    ({"fig1_sp_T1": RUN, "fig1_sp.png": b"my own figure"}, False),
    ({"fig1_mup_T1": {}, "report.md": TITLE}, False),
    ({"fig1_sp_T1": RUN, "fig1_sp_T256": {"config.yaml": b"my: own config\n"}}, False),
    # a demo stopped mid-write leaves its partial files (write_whole): a rerun was refused
    ({"fig1_sp_T1": RUN, ".partial-report.md": TITLE[:9], ".partial-fig1_sp.png": FIGURE[:5]}, True),
    ({"fig1_sp_T1": RUN, ".partial-report.md": b"", ".partial-fig1_mup.png": FIGURE}, True),
    ({"fig1_sp_T1": RUN, ".partial-report.md": TITLE + b"\n\n| param"}, True),    # cut off past its title
    ({"fig1_sp_T1": RUN, ".partial-notes.md": b"# Warmup"}, False),               # no name it writes
    ({"fig1_sp_T1": RUN, ".partial-report.md": b"my own notes\n"}, False),       # judged by content
    ({"fig1_sp_T1": RUN, ".partial-fig1_sp.png": b"\x89PNG\r\n\x1a\nmy own figure, unmarked"}, False),
    ({"fig1_sp_T1": RUN, ".partial-fig1_mine.png": FIGURE[:5]}, False),           # a figure it never draws
])
def test_the_demo_writes_only_into_a_directory_it_wrote(tmp_path, capsys, monkeypatch, entries, ours):
    ran = []
    monkeypatch.setattr(demo_module, "run_demo", lambda out, **kwargs: ran.append(out))
    out = tmp_path / "out"
    out.mkdir()
    for name, data in entries.items():
        if isinstance(data, dict):
            (out / name).mkdir()
            for inner, content in data.items():
                (out / name / inner).write_bytes(content)
        else:
            (out / name).write_bytes(data)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert cli.main(["demo", "--out", str(out)]) == (0 if ours else 2)
    assert ran == ([str(out)] if ours else []) and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    if not ours:
        assert "is not a directory `catapult demo` wrote" in capsys.readouterr().err


def test_the_demo_never_writes_through_a_link_in_its_directory(tmp_path, capsys, monkeypatch):
    # report.md linked to the user's notes: an earlier demo's directory, so the rerun wrote through it
    monkeypatch.setattr(demo_module, "run_demo", lambda out, **kwargs: pytest.fail("the demo ran"))
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    out = tmp_path / "out"
    (out / "fig1_sp_T1").mkdir(parents=True)
    for name, content in RUN.items():
        (out / "fig1_sp_T1" / name).write_bytes(content)
    (out / "report.md").symlink_to(notes)
    assert cli.main(["demo", "--out", str(out)]) == 2
    assert "is not a directory `catapult demo` wrote (it holds report.md)" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"


def test_write_configs_replaces_only_the_configs_it_wrote(tmp_path, capsys):
    # a user's own fig1_sp_T64.yaml in the directory was overwritten without a word
    out = tmp_path / "cfgs"
    assert cli.main(["demo", "--write-configs", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 8 and "fig1_sp_T64.yaml" in written
    (out / "fig1_sp_T1.yaml").write_text("# earlier\n")
    mine = "# my own variant\nname: fig1_sp_T64\noptimizer: {name: sgd, lr: 64/lambda0}\n"
    (out / "fig1_sp_T64.yaml").write_text(mine)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["demo", "--write-configs", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--write-configs" in err and "fig1_sp_T1.yaml, fig1_sp_T64.yaml" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # nothing written, not even ours
    (out / "fig1_sp_T1.yaml").unlink()
    (out / "fig1_sp_T64.yaml").unlink()
    assert cli.main(["demo", "--write-configs", str(out)]) == 0        # its own earlier files: replaced
    assert sorted(p.name for p in out.iterdir()) == written


def test_write_configs_never_writes_through_a_link_nor_waits_on_a_fifo(tmp_path, capsys):
    # a link to a config it wrote counted as its own, and the write went into the link's target;
    # a FIFO under a config's name was opened to be judged, and the command waited forever
    import os
    import threading

    out = tmp_path / "cfgs"
    assert cli.main(["demo", "--write-configs", str(out)]) == 0
    elsewhere = tmp_path / "kept.yaml"
    (out / "fig1_sp_T1.yaml").rename(elsewhere)
    before = elsewhere.read_bytes()
    elsewhere.write_bytes(before.replace(b"name: fig1_sp_T1", b"name: kept"))
    (out / "fig1_sp_T1.yaml").symlink_to(elsewhere)
    assert cli.main(["demo", "--write-configs", str(out)]) == 2
    assert "fig1_sp_T1.yaml" in capsys.readouterr().err and b"name: kept" in elsewhere.read_bytes()
    (out / "fig1_sp_T1.yaml").unlink()
    os.mkfifo(out / "fig1_sp_T1.yaml")
    codes = []
    command = threading.Thread(target=lambda: codes.append(cli.main(["demo", "--write-configs", str(out)])),
                               daemon=True)
    command.start()
    command.join(timeout=30)
    if command.is_alive():
        with open(out / "fig1_sp_T1.yaml", "wb"):   # release the blocked open() so the test ends
            pass
        pytest.fail("--write-configs waited on a FIFO")
    assert codes == [2]


@pytest.mark.parametrize("where", ["/dev/null", "file", "file/sub", "dangling"])
def test_write_configs_names_a_file_where_a_folder_is_needed(tmp_path, capsys, where):
    # `--write-configs /dev/null` said "/dev/null: File exists", a path under a file "Not a directory"
    (tmp_path / "file").write_text("mine\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    path = where if where == "/dev/null" else str(tmp_path / where)
    assert cli.main(["demo", "--write-configs", path]) == 2
    err = capsys.readouterr().err
    blocker = where if where == "/dev/null" else str(tmp_path / where.split("/")[0])
    assert f"--write-configs: {blocker} is not a directory" in err
    assert (tmp_path / "file").read_text() == "mine\n" and not (tmp_path / "nowhere").exists()


def test_the_shipped_demo_configs_are_what_write_configs_writes(tmp_path):
    # configs/demo had drifted from the command (keys added since were missing)
    from catapult.demo import write_configs

    root = Path(__file__).resolve().parents[1]
    written = write_configs(tmp_path / "demo")
    shipped = sorted((root / "configs" / "demo").glob("*.yaml"))
    assert [p.name for p in shipped] == sorted(p.name for p in written)
    for path in written:
        ours = path.read_text().replace(str(tmp_path / "demo"), "configs/demo")
        assert ours == (root / "configs" / "demo" / path.name).read_text(), path.name


_KILLED_DEMO = """
import os, signal, sys
from catapult.demo import _worker_pool
pool = _worker_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # as `kill -9` of a running demo
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaps yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_demo_workers_end_with_a_killed_demo():
    # A demo stopped by kill left its workers training into its folder for minutes.
    import subprocess
    import sys
    import time

    demo = subprocess.Popen([sys.executable, "-c", _KILLED_DEMO], stdout=subprocess.PIPE, text=True)
    with demo.stdout:  # (a surviving worker holds the pipe open: read the line, not to the end)
        worker = int(demo.stdout.readline())
    assert demo.wait(timeout=60) == -9
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive


def test_write_configs_judges_both_of_its_header_lines(tmp_path, capsys):  # Mutation pass 24 (DM6)
    # a user's config that begins with the demo's first comment line (copied from one it wrote) but
    # not its second is the user's: refused, and kept as it was
    out = tmp_path / "cfgs"
    assert cli.main(["demo", "--write-configs", str(out)]) == 0
    ours = (out / "fig1_mup_T16.yaml").read_text()
    first = ours.splitlines()[0]
    assert first.startswith("# Fig. 1 in miniature (catapult demo): ")
    mine = first + "\n# my own edit of it\nname: fig1_mup_T16\noptimizer: {name: sgd, lr: 4.0}\n"
    (out / "fig1_mup_T16.yaml").write_text(mine)
    assert cli.main(["demo", "--write-configs", str(out)]) == 2
    assert "fig1_mup_T16.yaml" in capsys.readouterr().err
    assert (out / "fig1_mup_T16.yaml").read_text() == mine
