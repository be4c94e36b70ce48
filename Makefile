# twisted_shim — the two set-up commands are `make run` and `make test`.
# Both work on a fresh machine: they make a virtualenv, install the Python
# packages, and build the Rust extension with maturin.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: all help venv build run test test-rust test-python services test-pythons conformance conformance-asyncio conformance-full conformance-peers bench bench-wsgi bench-long fuzz lint fmt clean

all: build

# The targets with a "## what it does" comment, as a list.
help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		sed -E 's/^([a-z-]+):.*## (.*)$$/\1\t\2/' | \
		awk -F '\t' '{ printf "  make %-18s %s\n", $$1, $$2 }'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python packages: Twisted (with the extras its test suites import), the build
# backend, the test tools and uvloop for the benchmarks.
$(VENV)/.deps: requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps ## the virtualenv (.venv) with requirements-dev.txt installed

# The extension, built in release mode into the source tree (editable install).
build: $(VENV)/.deps ## build the Rust extension into the tree (release, editable install)
	$(BIN)/maturin develop --release -q

run: build ## serve examples/hello.py on http://127.0.0.1:8000/ (HOST=, PORT=)
	@echo "Serving examples/hello.py on http://$(HOST):$(PORT)/ (reactor: rust)"
	$(BIN)/twisted-shim serve examples.hello:application --bind $(HOST):$(PORT)

test: build test-rust test-python conformance ## everything: Rust tests, pytest, conformance

test-rust: $(VENV)/.deps ## cargo test
	PYO3_PYTHON=$(abspath $(BIN)/python) cargo test --quiet

# PostgreSQL and redis-server binaries for the integration tests (apt-get if
# missing; system services left stopped). The tests start their own servers.
services: ## PostgreSQL and redis-server binaries for the integration tests
	bash scripts/services.sh

test-python: build services ## pytest tests/ (PostgreSQL and Redis on loopback)
	$(BIN)/python -m pytest -q tests

# The core suites on every other CPython 3.11+ found on PATH (not in `test`).
test-pythons: build ## core suites + ReactorBuilder on every other CPython 3.11+ found
	bash scripts/test_pythons.sh

# Twisted's ReactorBuilder suites, then the TCP, reactor and endpoint tests
# that run on the global reactor, on rust and epoll side by side: each fails
# on a test that does worse on rust, in outcome or in time. Then the
# ReactorBuilder suites again with Twisted's own TCP transports
# (TWISTED_SHIM_TRANSPORT=python), so both kinds stay covered; last, the
# fast subset of CPython's test_asyncio on the default loop and ours, and on
# ours again with CPython's socket transports (the same switch).
CORE_SUITES := twisted.test.test_tcp twisted.test.test_unix twisted.test.test_internet twisted.internet.test.test_endpoints

conformance: build ## ReactorBuilder suites and core tests, rust and epoll side by side
	$(BIN)/python -m conformance.run_builders
	$(BIN)/python -m conformance.run_full --name core --suite $(CORE_SUITES)
	TWISTED_SHIM_TRANSPORT=python $(BIN)/python -m conformance.run_builders --only rust
	$(BIN)/python -m conformance.run_asyncio --fast
	TWISTED_SHIM_TRANSPORT=python $(BIN)/python -m conformance.run_asyncio --fast

# CPython's test.test_asyncio, every module that runs on Linux, on the default
# asyncio loop and on twisted_shim.aio side by side (about ten minutes; `make
# conformance` runs a fast subset).
conformance-asyncio: build ## CPython's test_asyncio on the default loop and ours, side by side
	$(BIN)/python -m conformance.run_asyncio

# The whole Twisted suite on rust and epoll (about ten minutes: one trial
# process each, so that every test's duration is known).
conformance-full: build ## the whole Twisted suite on both (about ten minutes)
	$(BIN)/python -m conformance.run_full

# The suites treq, twisted.web, twisted.names, txpostgres and test_adbapi ship
# (on rust and epoll), then Scrapy's and Daphne's (on rust and Twisted's
# asyncio reactor, in .venv-peers; about 25 minutes). Both run; either
# failing fails the target.
conformance-peers: build services ## treq, twisted.web, twisted.names, txpostgres, test_adbapi, txredisapi; Scrapy, Daphne
	$(BIN)/python -m conformance.run_peers; a=$$?; \
	$(BIN)/python -m conformance.run_asyncio_peers; b=$$?; \
	exit $$(( a || b ))

bench: build ## reactor benchmarks, latency.py, transport_bench.py, aio_bench.py, then scrapy_bench.py
	$(BIN)/python benchmarks/reactor_bench.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/transport_bench.py
	$(BIN)/python benchmarks/aio_bench.py
	$(BIN)/python benchmarks/scrapy_bench.py

# WSGI servers side by side (installs the peers into .venv-bench).
bench-wsgi: build ## WSGI servers side by side (installs peers in .venv-bench)
	$(BIN)/python benchmarks/wsgi_bench.py --setup

# What pause_output and body spooling are for, apart from bench-wsgi (either
# can run alone): 5,000 connections with raised descriptor limits and 5 GiB
# of uploads, about 8 minutes.
bench-long: build ## long waits (5,000 connections, 1 s upstream) and 20 x 256 MiB uploads
	$(BIN)/python benchmarks/long_wait.py
	$(BIN)/python benchmarks/upload.py

# The request parser under cargo-fuzz (nightly; not part of `test`).
FUZZ_SECONDS ?= 300
fuzz: ## fuzz the request parser with cargo-fuzz for FUZZ_SECONDS (300)
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

lint: $(VENV)/.deps ## cargo fmt --check, cargo clippy -D warnings, ruff
	cargo fmt --check
	cargo fmt --check --manifest-path fuzz/Cargo.toml
	cargo clippy --quiet -- -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: ## cargo fmt and ruff format
	cargo fmt
	$(BIN)/ruff check --fix . || true
	$(BIN)/ruff format .

clean: ## remove build and test leftovers
	rm -rf target _trial_temp* .pytest_cache _asyncio_conformance
