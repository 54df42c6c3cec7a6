# irtoolkit — one-step setup, tests and the demo.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.irtoolkit-installed
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test test-fast demo lint clean-experiments

setup: $(STAMP)

# torch first, then basicsr without build isolation (its setup_requires would pull a second torch),
# then the package itself, editable, with dev extras.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "setuptools<81" wheel cython numpy
	$(VPY) -m pip install -q --no-build-isolation "basicsr==1.4.2"
	$(VPY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# make test: every test (~6.5 min on 2 CPU cores, 8 serially); make test-fast: without the end-to-end runs marked
# slow. TEST_WORKERS pytest-xdist processes of one thread each (0: one serial process of two threads).
TEST_WORKERS ?= 2
test: setup
	$(VPY) -m pytest -q -n $(TEST_WORKERS) tests

test-fast: setup
	$(VPY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

# make demo [DEG=haze|rain|noise|blur] [ITERS=N] [DEVICE=auto|cpu|cuda]
DEG ?= haze
DEVICE ?= auto
ITERS ?=
demo: setup
	$(VPY) tools/demo.py --degradation $(DEG) --device $(DEVICE) $(if $(ITERS),--iters $(ITERS))

lint: setup
	$(VPY) -m flake8 irtoolkit tools tests benchmarks

clean-experiments:
	rm -rf experiments results tb_logger
