"""Cell claims at the API level: of two drivers claiming one cell exactly one gets it; a dead
driver's claim (process gone, or heartbeat past the lease) is taken over; a driver that lost
its claim cannot record the cell; a released driver's running cells read ``interrupted``."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from catapult import config as cfg
from catapult.sweep import parse_sweep
from catapult.sweep.claims import LEASE_S
from catapult.sweep.executors import CellResult
from catapult.sweep.spec import expand
from catapult.sweep.spec_document import spec_document
from catapult.sweep.store import Store


def _store(path):
    config = cfg.validate({"name": "c", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.01, 0.02, 0.04]}})
    with Store(path) as store:
        store.open_sweep(spec_document(config, spec), expand(config, spec))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _done(value=0.5):
    return CellResult("finished", [{"step": 0, "train_loss": value}], {})


def test_one_cell_one_claim_and_only_the_holder_records(tmp_path):
    path = _store(tmp_path / "s.db")
    with Store(path) as a, Store(path) as b:
        da, db = a.register_driver(), b.register_driver()
        assert a.claim(0, da) and not b.claim(0, db)
        assert b.record(0, _done(), driver_id=db) is None  # b does not hold it: nothing written
        assert a.cell(0)["status"] == "running" and a.cell(0)["attempts"] == 1
        assert a.record(0, _done(), driver_id=da) == "finished"
        assert not b.claim(0, db)  # a result is never run again
        assert b.claim(1, db)


def test_a_dead_drivers_claims_are_taken_over(tmp_path):
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        gone, stale, live = store.register_driver(), store.register_driver(), store.register_driver()
        assert store.claim(0, gone) and store.claim(1, stale)
        store.conn.execute("UPDATE drivers SET pid = ? WHERE id = ?", (_dead_pid(), gone))  # kill -9'd
        store.conn.execute("UPDATE drivers SET heartbeat = ? WHERE id = ?", (time.time() - 2 * LEASE_S, stale))
        assert store.interrupted_ids() == {0, 1}
        assert store.counts(interrupted=True)["interrupted"] == 2
        assert [c["status"] for c in store.cells()] == ["interrupted", "interrupted", "pending"]
        assert store.claim(0, live) and store.claim(1, live)
        assert store.cell(0)["attempts"] == 2 and not store.interrupted_ids()
        assert store.record(0, _done(), driver_id=gone) is None  # the dead one woke up: too late
        assert store.record(0, _done(), driver_id=live) == "finished"


def test_a_released_driver_leaves_interrupted_cells_for_the_next(tmp_path):
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        first = store.register_driver()
        assert store.claim(2, first)
        store.release_driver(first)  # Ctrl-C
    with Store(path, create=False) as reader:
        assert reader.interrupted_ids() == {2}
    with Store(path) as store:
        second = store.register_driver()
        assert store.claim(2, second)


def test_a_failure_is_retried_by_a_later_driver_only(tmp_path):
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        one, two = store.register_driver(), store.register_driver()
        since = time.time()
        assert store.claim(0, one, retry_failed_before=since)
        assert store.record(0, CellResult("failed", [], {}, error="boom"), driver_id=one) == "failed"
        assert not store.claim(0, two, retry_failed_before=since)  # failed in this session: final
        assert store.claim(0, two, retry_failed_before=time.time() + 1)  # a driver started later retries


def _pid_namespace_ok() -> str | None:
    import shutil

    if shutil.which("unshare") is None:
        return "needs `unshare`"
    probe = subprocess.run(["unshare", "-p", "-f", "-m", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a PID namespace here ({probe.stderr.strip()[:200]})"
    return None


CHECK_FROM_ANOTHER_PID_NAMESPACE = """
import json, sys
from catapult.sweep.store import Store
with Store(sys.argv[1], create=False) as store:
    print(json.dumps(sorted(store.interrupted_ids())))
"""


def test_a_live_driver_is_not_taken_for_dead_from_another_pid_namespace(tmp_path):
    # a container with the host's name (docker --network host, a hostNetwork pod) sees another pid
    # space: the host's driver pid did not exist there, so its running cells read interrupted at
    # once and were taken over and computed again while it ran them
    import json

    reason = _pid_namespace_ok()
    if reason:
        pytest.skip(reason)
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        driver = store.register_driver()  # this process: alive, heartbeat fresh
        assert store.claim(0, driver)
        assert store.interrupted_ids() == set()  # seen from here: alive
        script = tmp_path / "check.py"
        script.write_text(CHECK_FROM_ANOTHER_PID_NAMESPACE)
        out = subprocess.run(["unshare", "-p", "-f", "-m", "--mount-proc", sys.executable, str(script), str(path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout) == []  # alive there too, until its lease runs out


def test_registering_forgets_only_drivers_ten_leases_dead_that_hold_nothing(tmp_path):
    # mutation pass 21 (CL1, CL2): drivers 5 leases dead, or 11 leases dead holding a claim, are kept; one 11
    # leases dead holding nothing is forgotten
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        recent, holder, old = store.register_driver(), store.register_driver(), store.register_driver()
        assert store.claim(0, holder)
        now = time.time()
        for driver, leases in ((recent, 5), (holder, 11), (old, 11)):
            store.conn.execute("UPDATE drivers SET heartbeat = ? WHERE id = ?", (now - leases * LEASE_S, driver))
        new = store.register_driver()
        kept = {row[0] for row in store.conn.execute("SELECT id FROM drivers")}
        assert kept == {recent, holder, new}


def test_a_claim_by_its_own_holder_is_taken_and_a_diverged_cell_never_again(tmp_path):
    # mutation pass 21: the holder's own claim on its running cell (CL3: refused as another live driver's), and a
    # diverged result is done (CL4: only 'finished' was), as a finished one is
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        one, two = store.register_driver(), store.register_driver()
        assert store.claim(0, one) and store.claim(0, one) and store.cell(0)["attempts"] == 2
        assert store.claim(1, one)
        assert store.record(1, CellResult("diverged", [{"step": 0, "train_loss": 1e9}], {}), driver_id=one) == "diverged"
        assert not store.claim(1, two) and not store.claim(1, one)


def test_a_failure_at_the_drivers_start_instant_is_this_sessions(tmp_path):
    # mutation pass 21 (CL5): finished_at == retry_failed_before is not before it: not retried
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        one = store.register_driver()
        assert store.claim(0, one)
        assert store.record(0, CellResult("failed", [], {}, error="boom"), driver_id=one) == "failed"
        at = store.cell(0)["finished_at"]
        assert not store.claim(0, one, retry_failed_before=at)
        assert store.claim(0, one, retry_failed_before=at + 1e-3)


def test_a_released_driver_cannot_record_the_cells_it_held(tmp_path):
    # mutation pass 21 (CL7): release_driver kept its claims, and the released driver still recorded its cell
    path = _store(tmp_path / "s.db")
    with Store(path) as store:
        first = store.register_driver()
        assert store.claim(2, first)
        store.release_driver(first)
        assert store.record(2, _done(), driver_id=first) is None
        assert store.cell(2)["status"] == "interrupted" and store.interrupted_ids() == {2}
