#!/usr/bin/env bash
# The GPU checks in one prepared run (about 3-5 min on one H100/H200):
#   1. the ensemble (hand-derived kernels and torch.func engine) equals the local engine on
#      CUDA (tests marked for a CUDA device), and
#   2. ensemble vs local cells/s on the GPU (the >= 30x goal), for N = 8, 32, 128;
#   3. train_ddp on CUDA unsharded, under DDP and under FSDP (train.fsdp) on NCCL: the same losses
#      and sharpness (FSDP's by finite differences).
# Runs from the repository root with the machine's own python3 (torch with CUDA, numpy,
# matplotlib, PyYAML, scikit-learn, tqdm and pytest installed); nothing is installed. Output
# goes to $OUT (the device tool's folder) or runs/gpu_check. Record the table in
# bench/RESULTS.md. Through the device tool:
#   run(command="bash bench/gpu_check.sh", timeout_s=600)
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/env.txt" 2>/dev/null
python3 -c "import pydantic" 2>/dev/null || echo "pydantic is missing on this machine: the config needs it (carry a venv or wheels)" | tee -a "$out/env.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_sweep_ensemble.py tests/test_sweep_batched.py -k cuda -rs 2>&1 | tee "$out/tests.txt"
timeout 300 python3 bench/bench_ensemble.py --device cuda --reps 2 2>&1 | tee "$out/bench.txt"
timeout 90 python3 bench/check_train_ddp_device.py --device cuda --backend nccl 2>&1 | tee "$out/train_ddp.txt"
