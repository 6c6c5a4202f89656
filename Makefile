# Quick start: `make demo` (set up, then run the main job) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test check docs clean

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST (real data, 70k images) from Debian's dataset-fashion-mnist package.
$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FASHION)

# The main job: the demo SCNet and its plain twin, same recipe (5 epochs on all 60,000 training images, trained at
# once, a thread each), tested on all 10,000 test images, with their effective receptive fields; report in runs/demo/.
demo: setup data
	$(VENV)/bin/scnet info --models 'scnet_demo*' --input-size 32
	$(VENV)/bin/scnet compare --models scnet_demo --seeds 0 --channels-last --jobs 2 --erf-samples 200 --out runs/demo

# Tests run in one process per CPU (at most 4; pytest-xdist, a test file to a process so that its fixtures are built
# once), each process with one thread: much of the suite waits on subprocesses, timeouts and imports, which one
# process at a time leaves cores idle through (22 min serially on 2 cores, 13 in two processes).
TEST_PROCS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_PROCS) --dist loadfile

# The suite, then the wheel as a user gets it: built, checked, installed into a fresh venv and used outside the tree.
test: setup data
	$(PYTEST) --durations=25
	bash scripts/smoke_wheel.sh $(PY)

# The edit-test loop: the suite without the checks marked slow (CI and make test run those too).
check: setup data
	$(PYTEST) -x -m "not slow"

# The documentation site (guides, results, the API reference from the docstrings), built offline into site/; strict:
# a broken link, a missing page or an unresolved reference fails the build (tests/test_docs.py builds it in CI).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build site src/*.egg-info
