# twisted_shim — the two set-up commands are `make run` and `make test`.
# Both work on a fresh machine: they make a virtualenv, install the Python
# packages, and build the Rust extension with maturin.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: all venv build run test test-rust test-python services test-pythons conformance conformance-full conformance-peers bench bench-wsgi lint fmt clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python packages: Twisted (with the extras its test suites import), the build
# backend, the test tools and uvloop for the benchmarks.
$(VENV)/.deps: requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# The extension, built in release mode into the source tree (editable install).
build: $(VENV)/.deps
	$(BIN)/maturin develop --release -q

run: build
	@echo "Serving examples/hello.py on http://$(HOST):$(PORT)/ (reactor: rust)"
	$(BIN)/twisted-shim serve examples.hello:application --bind $(HOST):$(PORT)

test: build test-rust test-python conformance

test-rust: $(VENV)/.deps
	PYO3_PYTHON=$(abspath $(BIN)/python) cargo test --quiet

# PostgreSQL and redis-server binaries for the integration tests (apt-get if
# missing; system services left stopped). The tests start their own servers.
services:
	bash scripts/services.sh

test-python: build services
	$(BIN)/python -m pytest -q tests

# The core suites on every other CPython 3.11+ found on PATH (not in `test`).
test-pythons: build
	bash scripts/test_pythons.sh

# Twisted's ReactorBuilder suites, then the TCP, reactor and endpoint tests
# that run on the global reactor, on rust and epoll side by side: each fails
# on a test that does worse on rust, in outcome or in time.
CORE_SUITES := twisted.test.test_tcp twisted.test.test_internet twisted.internet.test.test_endpoints

conformance: build
	$(BIN)/python -m conformance.run_builders
	$(BIN)/python -m conformance.run_full --name core --suite $(CORE_SUITES)

# The whole Twisted suite on rust and epoll (about ten minutes: one trial
# process each, so that every test's duration is known).
conformance-full: build
	$(BIN)/python -m conformance.run_full

# The suites treq, twisted.web, twisted.names, txpostgres and test_adbapi ship.
conformance-peers: build services
	$(BIN)/python -m conformance.run_peers

bench: build
	$(BIN)/python benchmarks/reactor_bench.py
	$(BIN)/python benchmarks/latency.py

# WSGI servers side by side (installs the peers into .venv-bench).
bench-wsgi: build
	$(BIN)/python benchmarks/wsgi_bench.py --setup

lint: $(VENV)/.deps
	cargo fmt --check
	cargo clippy --quiet -- -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt:
	cargo fmt
	$(BIN)/ruff check --fix . || true
	$(BIN)/ruff format .

clean:
	rm -rf target _trial_temp* .pytest_cache
