"""The Ray executor on a real local Ray instance gives the local executor's results, and a
worker killed mid-cell gets its cell redone.

Ray runs in a fresh network namespace (``unshare -n``, loopback only) so the test neither
needs nor touches the network; the script below runs there as a subprocess and prints JSON.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

BASE = {
    "name": "ray", "data": {"name": "digits", "n_train": 128, "n_test": 64},
    "model": {"width": 16, "depth": 3, "parametrization": "sp"},
    "train": {"steps": 40}, "eval": {"sharpness_every": 0, "test_every": 20, "sharpness_max_iter": 30},
}
GRID = {"grid": {"optimizer.lr": {"log2_over_lambda0": [3, 6]}, "schedule.warmup_steps": [1, 8]}}

SCRIPT = r'''
import json, os, sys
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.ray_executor import RayExecutor

work, ray_tmp = sys.argv[1], sys.argv[2]
marker = os.path.join(work, "crashed-once")
base, grid = json.loads(sys.argv[3]), json.loads(sys.argv[4])


def crash_once(config, progress=None):
    # the worker running cell ray-5 dies (like a lost node) the first time it gets there
    if config["name"] == "ray-5" and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    from catapult.engine import run
    return run(config, progress=progress)


executor = RayExecutor(run_fn=crash_once, num_cpus=2, threads=1, max_retries=2, init_kwargs={"_temp_dir": ray_tmp})
run_sweep(cfg.validate(base), parse_sweep(grid), os.path.join(work, "ray.db"), executor=executor, progress="none")
import ray
print(json.dumps({"ray_running_after": ray.is_initialized(), "pid": os.getpid()}))
'''


def _table(path):
    from catapult.sweep.store import Store

    with Store(path, create=False) as store:
        return {c["id"]: {"status": c["status"], "error": c["error"], "worker": c["worker"],
                          "metrics": store.metrics(c["id"])} for c in store.cells()}


def _namespace_ok() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs `unshare` and `ip` to run Ray in a private network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here (unshare -n: {probe.stderr.strip()[:200]})"
    return None


@pytest.mark.slow
def test_ray_executor_matches_local_and_redoes_a_lost_worker(tmp_path):
    pytest.importorskip("ray")
    reason = _namespace_ok()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "ray_sweep.py"
    script.write_text(textwrap.dedent(SCRIPT))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    args = [str(script), str(tmp_path), ray_tmp, json.dumps(BASE), json.dumps(GRID)]
    inner = (f"ip link set lo up && RAY_USAGE_STATS_ENABLED=0 exec {shlex.quote(sys.executable)} "
             + " ".join(shlex.quote(a) for a in args))
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", inner], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # the reference: the local executor in this process, while Ray starts up over there
        from catapult import config as cfg
        from catapult.sweep import parse_sweep, run_sweep
        from catapult.sweep.executors import LocalExecutor

        run_sweep(cfg.validate(BASE), parse_sweep(GRID), tmp_path / "local.db", executor=LocalExecutor(threads=1),
                  progress="none")
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, stderr[-4000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    local, ray = _table(tmp_path / "local.db"), _table(tmp_path / "ray.db")
    assert (tmp_path / "crashed-once").exists(), "the injected worker crash did not happen"
    assert not out["ray_running_after"], "the executor should shut down the Ray instance it started"
    assert sorted(local) == sorted(ray) == list(range(8))
    statuses = {v["status"] for v in local.values()}
    assert statuses == {"finished", "diverged"}, statuses  # both kinds of result compared
    for cell_id in local:
        a, b = local[cell_id], ray[cell_id]
        assert b["status"] == a["status"] and b["error"] is None, (cell_id, b["error"])
        assert b["metrics"] == a["metrics"], cell_id  # bit for bit at one thread per cell
        assert not b["worker"].endswith(f":{out['pid']}")  # ran in a Ray worker, not the driver
