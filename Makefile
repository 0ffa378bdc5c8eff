# The two commands of a fresh machine: `make demo` and `make test` (each creates .venv and installs first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo

.PHONY: demo test install clean

# Dependencies once per pyproject change. torch first and pinned: a bare range would pull a multi-GB CUDA
# build on machines that have the CPU wheel of 2.13.0 at hand.
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q "torch>=2.11,<2.14"
	$(BIN)/python -m pip install -q ".[test]"
	touch $@

# The package itself on every run (a regular install: tests run against what users get).
install: $(VENV)/.deps
	$(BIN)/python -m pip install -q --no-deps --force-reinstall .

# Two workers (pytest-xdist): CI's two cores. Much of the suite waits on subprocesses and imports; a test that
# judges the host's load holds it alone (tests/conftest.py: WorkerShare). JOBS=0 runs one process.
JOBS ?= 2

test: install
	$(BIN)/pytest -q -n $(JOBS) --durations=15 tests

demo: install
	rm -rf $(DEMO)
	$(BIN)/mmchar workloads
	$(BIN)/mmchar compare sd15 --preset tiny --backends math,flash --device cpu --repeat 3 --store $(DEMO)/runs
	$(BIN)/mmchar compare modelscope-t2v --preset tiny --backends math,flash --device cpu --repeat 3 --store $(DEMO)/runs
	$(BIN)/mmchar export $(DEMO)/runs -o $(DEMO)/breakdown.csv
	$(BIN)/mmchar dashboard $(DEMO)/runs -o $(DEMO)/report.html
	@echo
	@echo "run store:  $(CURDIR)/$(DEMO)/runs   (one folder per run; comparisons/ holds the compare tables)"
	@echo "breakdown:  $(CURDIR)/$(DEMO)/breakdown.csv"
	@echo "dashboard:  $(CURDIR)/$(DEMO)/report.html   (open it in a browser; it works offline)"
	@echo "the mmchar command: . .venv/bin/activate   (then e.g. mmchar runs $(DEMO)/runs)"

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
