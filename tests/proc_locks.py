"""The POSIX locks this process holds on a file, read from Linux's ``/proc/self/fdinfo``.

Not ``/proc/locks``: the kernel hands it out a page per ``read()`` while other processes' locks come
and go, so it can list a lock of ours twice or not at all (seen under CI load: 'db': ['READ', 'READ']).
Each descriptor's fdinfo is that file's lock list, read whole, with the locks this process took
through it. Imported by tests and by the scripts they run in subprocesses (``sys.path`` given)."""
from __future__ import annotations

import os


def posix_locks(path) -> list[tuple[int, str, str]]:
    """``(start, end, kind)`` of the POSIX locks this process holds on ``path``, by byte range: the
    "lock:" lines of ``/proc/self/fdinfo`` for this process's descriptors on the file (device and
    inode); a descriptor closed since the listing is passed over."""
    wanted = os.stat(path)[1:3]   # (inode, device)
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{fd}")[1:3] != wanted:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                info = fh.read()
        except OSError:   # closed since the listing
            continue
        for line in info.splitlines():   # "lock: 1: POSIX  ADVISORY  READ PID MAJ:MIN:INODE START END"
            fields = line.split()
            if fields[:1] == ["lock:"] and fields[2] == "POSIX":
                found.add((int(fields[7]), fields[8], fields[4]))
    return sorted(found)
