# Two commands on a fresh clone: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench conformance chaos clean

run: $(VENV)/.installed
	$(BIN)/python -m wsgate

# The layer contracts (setup.cfg [importlinter]) first, then the tests.
test: $(VENV)/.installed-test
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

EXAMPLE_PLUGINS := $(wildcard plugins/*/pyproject.toml)

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml $(EXAMPLE_PLUGINS)
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach p,$(EXAMPLE_PLUGINS),-e $(dir $(p)))
	touch $@ $(VENV)/.installed

# Load test on loopback: the server pinned to core 0, picows clients to core 1 (a few minutes).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py

$(VENV)/.installed-bench: $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# RFC 6455 conformance (Autobahn|Testsuite, ../shared/conformance/autobahn): 1-7, 9, 10, then 12.1 and 13.1
# with compression. The first run on a machine builds the suite's root (about 4 minutes, needs root).
conformance: $(VENV)/.installed
	AUTOBAHN_XFAIL=7.9.5 PYTHON=$(BIN)/python conformance/run.sh

# The chaos run (chaos/run.py): three nodes, Redis restarts, 1,000 clients losing their sockets; results in
# chaos/RESULTS.md. Loopback only, about 4 minutes, stops by itself; exits 1 unless nothing was lost.
chaos: $(VENV)/.installed-test
	$(BIN)/python chaos/run.py

clean:
	rm -rf $(VENV) build *.egg-info
