# rapid-objection: every target bootstraps its own virtualenv in .venv.
# Needs only Python 3.11+ (as python3, or PYTHON=...) and GNU make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed

# Extra arguments for pytest, e.g.  make test PYTEST_ARGS='-k bus -x'
PYTEST_ARGS ?=
# Test files run in parallel processes (most tests wait on servers and subprocesses, not
# on the CPU); a file stays in one process so its module fixtures start once.
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help

.PHONY: help .venv demo test lint bench bench-registry clean

help:
	@echo "make demo    run the demo on the embedded bus (no servers needed)"
	@echo "make test    lint, type-check and run the whole test suite"
	@echo "make lint    ruff check + mypy"
	@echo "make bench   benchmark on a real Redis (figures in docs/benchmarks.md)"
	@echo "make bench-registry  100 SQLite apps with and without 3 required plugins"
	@echo "make clean   remove .venv, caches and build output"

# The interpreter is the marker that the venv exists; a half-made .venv
# directory without it is recreated.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes. A stamp is only written when pip
# succeeds, so a failed install is retried on the next run. The demo needs only the
# package itself (SQLite and the embedded bus) and the metrics client for the bundled
# metrics plugin it shows; tests and lint add the database drivers and the dev tools.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[metrics]'
	@touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@ $(DEMO_STAMP)

.venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/rapid-objection demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python docs/generate.py --check

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

bench-registry: $(STAMP)
	$(BIN)/python -m bench.registry

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
