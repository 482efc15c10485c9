"""A test's writer script, run in another process without that process importing catapult (and
torch) again: ``python_child(script, *argv)`` is ``subprocess.Popen([sys.executable, "-c", script,
*argv], stdin=PIPE, stdout=PIPE, text=True)`` for the parts of Popen the store tests use
(``stdout.readline()``, ``communicate(text, timeout)``, ``wait(timeout)``, ``poll()``,
``returncode``), the process forked from a forkserver that imported ``catapult.sweep.store`` once
(a fresh interpreter paid ~2-3 s of CPU, 5-6 s of wall on a loaded box, for each writer).

Each child is its own process (its own pid, its own POSIX locks and SQLite connections); it runs
the script as ``__main__`` with ``sys.argv`` as ``-c`` gives it, and its lines printed to stdout
and read from stdin travel over pipes. When the script ends, its globals are dropped and
collected before the process exits, so a Store it left open is closed (and SQLite checkpoints)
as at an interpreter's teardown; a script's own ``os._exit`` skips that, as it does under Popen.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from multiprocessing import forkserver, util

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["catapult.sweep.store", "store_writers"])


class _Out:
    def __init__(self, conn):
        self.conn, self.pending = conn, ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.conn.send(line + "\n")
        return len(text)

    def flush(self):
        pass


class _In:
    def __init__(self, conn):
        self.conn = conn

    def readline(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return ""


def _main(script, argv, environ, out, inp):
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = ["-c", *argv]
    sys.stdout, sys.stdin = _Out(out), _In(inp)
    namespace = {"__name__": "__main__"}
    code = 0
    try:
        exec(compile(script, "<string>", "exec"), namespace)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as an interpreter would, exit code 1
        traceback.print_exc()
        code = 1
    namespace.clear()  # what the script left open is closed, as at the interpreter's teardown
    gc.collect()
    sys.stderr.flush()
    os._exit(code)


def _server_running() -> None:
    """The forkserver and multiprocessing's temporary folder (its socket's), made under the
    system's temporary directory even while a test has pointed ``tempfile.tempdir`` elsewhere
    (the store tests check that no file is left in theirs)."""
    saved, tempfile.tempdir = tempfile.tempdir, None
    try:
        util.get_temp_dir()
        forkserver.ensure_running()
    finally:
        tempfile.tempdir = saved


class python_child:  # noqa: N801 - named as the call it stands for
    def __init__(self, script: str, *argv: str, env: dict | None = None):
        _server_running()
        out_r, out_w = _CTX.Pipe(duplex=False)
        in_r, in_w = _CTX.Pipe(duplex=False)
        self.proc = _CTX.Process(target=_main, args=(script, argv, dict(os.environ if env is None else env),
                                                      out_w, in_r), daemon=True)
        self.proc.start()
        out_w.close()
        in_r.close()
        self._out, self._in = out_r, in_w
        self.stdout = self

    def readline(self) -> str:
        while True:
            ended = self.proc.exitcode is not None  # looked at before the pipe: no line is lost
            try:
                if self._out.poll(0.05):
                    return self._out.recv()
            except (EOFError, OSError):
                return ""
            if ended:
                return ""

    def communicate(self, text: str = "", timeout: float | None = None):
        for line in text.splitlines(True):
            try:
                self._in.send(line)
            except OSError:  # it ended already
                break
        self.wait(timeout)
        rest = []
        while True:
            line = self.readline()
            if not line:
                break
            rest.append(line)
        return "".join(rest), None

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(["python", "-c", "..."], timeout)
        return self.proc.exitcode

    def poll(self):
        return self.proc.exitcode

    @property
    def returncode(self):
        return self.proc.exitcode


def run_python(script: str, *argv: str, timeout: float = 120.0) -> None:
    """``subprocess.run([sys.executable, "-c", script, *argv], check=True, timeout=timeout)``."""
    child = python_child(script, *argv)
    code = child.wait(timeout)
    if code != 0:
        raise subprocess.CalledProcessError(code, ["python", "-c", script])
