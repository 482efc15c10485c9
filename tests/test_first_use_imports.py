"""What a process that measures curvature imports of torch beyond ``import torch``: neither
``torch._dynamo`` (+1.0 CPU s on torch 2.2.2, +1.7 on 2.13, torch's own ``Optimizer`` constructor
imports it) nor ``torch.distributed.fsdp`` (+1.0 CPU s on both; on 2.2.2 it imports dynamo too), where
no optimizer is built and nothing is sharded. Before: ``sharded.is_sharded`` imported the FSDP package
to ask whether a module was an ``FSDPModule`` (every sharpness call), and ``resolve_kind`` built a
``torch.optim.SGD`` to hold the param groups' lrs (``catapult spectrum`` of an SGD config, which
builds no optimizer). Numbers: bench/RESULTS.md, "torch 2.2, the declared floor"."""
from __future__ import annotations

import subprocess
import sys

REPORT = "import sys\nprint('dynamo', 'torch._dynamo' in sys.modules, 'fsdp', 'torch.distributed.fsdp' in sys.modules)\n"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code + REPORT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_sharpness_call_imports_neither_dynamo_nor_fsdp():
    code = ("import torch, catapult\n"
            "torch.manual_seed(0)\n"
            "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))\n"
            "est = catapult.sharpness(model, torch.nn.MSELoss(), (torch.randn(16, 4), torch.randn(16, 1)))\n"
            "assert est.converged and est.value > 0\n")
    assert _run(code) == "dynamo False fsdp False"


def test_spectrum_of_an_sgd_config_imports_neither_dynamo_nor_fsdp(tmp_path):
    config = tmp_path / "sgd.yaml"
    config.write_text("name: tiny\ndata: {name: digits, n_train: 64, n_test: 32}\n"
                      "model: {name: mlp, width: 16, depth: 2}\nloss: mse\noptimizer: {name: sgd, lr: 0.1}\n")
    code = ("import runpy, sys\n"
            f"sys.argv = ['catapult', 'spectrum', {str(config)!r}, '--top-k', '1', '--trace-matvecs', '0',\n"
            "            '--density-runs', '0', '--progress', 'none']\n"
            "try:\n"
            "    runpy.run_module('catapult', run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    assert not stop.code, stop.code\n")
    assert _run(code) == "dynamo False fsdp False"

