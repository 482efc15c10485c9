"""How ``catapult train-ddp`` frees its process group (``cli.train_ddp.end_process_group``).

torch before 2.8 frees a gloo group holding the GIL while joining its worker threads, and a
worker still dropping a finished collective whose tensors' Python objects are gone waits for the
GIL. A group of one whose last all-reduces' tensors were dropped at once hung in
``dist.destroy_process_group()`` on torch 2.2.2, 3 times in 3; ``end_process_group`` ends it.
Run in a fresh interpreter, so a hang fails the test (timeout) instead of hanging the suite.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from gloo_ranks import free_port

SCRIPT = """
import sys
import torch
import torch.distributed as dist
from catapult.cli.train_ddp import end_process_group

dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
total = torch.zeros(1000)
for _ in range(20):
    t = torch.ones(1000)
    dist.all_reduce(t, async_op=True)   # the tensor and the work handle dropped at once
    total += 1
end_process_group()
print("ended", dist.is_initialized(), float(total[0]))
"""


def test_the_group_is_freed_while_its_workers_drop_the_last_collectives_tensors():
    if not __import__("torch").distributed.is_gloo_available():
        pytest.skip("this torch has no gloo")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(free_port())], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ended", "False", "20.0"]
