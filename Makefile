# Quick start: `make demo` trains a relaxed vector-neuron classifier on an embedded
# synthetic data set; `make test` runs the test suite.  Both create `.venv` on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test test-all lint format bench clean

$(VENV)/.installed: setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,smoke]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m keras_relaxeq.demo

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# style: ruff's linter and formatter (configuration in pyproject.toml); `make format` rewrites the files
LINT_PATHS := keras_relaxeq recipes benchmarks tests
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: venv
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test-all: venv
	$(PY) -m pytest tests -q -m "" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_penalties.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
