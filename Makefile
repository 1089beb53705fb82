# Two commands on a fresh clone: `make run` and `make test` (`make test-fast` leaves out the slow tests). All create
# .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run check debian-tools test test-fast docs package-check bench bench-100k profile-inbound conformance chaos faults \
	clean

run: $(VENV)/.installed
	$(BIN)/python -m wsgate

SHELL := /bin/bash

# Lint and formatting (pyproject [tool.ruff]), the layer contracts (setup.cfg [importlinter]) and strict typing
# (setup.cfg [mypy]): the first step of `make test` and `make test-fast`.
check: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# $(call with_test_redis,COMMAND) runs COMMAND with a Redis for the tests: with nothing answering on 6379 (and no
# WSGATE_TEST_REDIS_URL), a private redis-server on a free port, given in WSGATE_TEST_REDIS_URL and stopped after.
define with_test_redis
	@if [ -z "$$WSGATE_TEST_REDIS_URL" ] && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null \
	    && command -v redis-server >/dev/null; then \
	  port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	  echo "make: a private redis-server on 127.0.0.1:$$port"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port $$port --save "" --appendonly no \
	    --pidfile /tmp/wsgate-test-redis-$$port.pid --logfile /dev/null; \
	  for _ in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null && break; sleep 0.1; done; \
	  WSGATE_TEST_REDIS_URL=redis://127.0.0.1:$$port $(1); status=$$?; \
	  kill $$(cat /tmp/wsgate-test-redis-$$port.pid); exit $$status; \
	else \
	  $(1); \
	fi
endef

# Debian packages some tests run (tests/test_nginx.py, tests/test_systemd.py, tests/test_browser.py), installed with
# apt-get when missing (as root, or through sudo without a password); otherwise one line says which tests will skip.
DEBIAN_TOOLS := nginx:/usr/sbin/nginx systemd:/usr/bin/systemd-analyze nodejs:/usr/bin/node npm:/usr/bin/npm \
	chromium:/usr/bin/chromium

debian-tools:
	@for entry in $(DEBIAN_TOOLS); do \
	  package=$${entry%%:*}; binary=$${entry#*:}; \
	  [ -x "$$binary" ] && continue; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make: $$binary is missing and apt-get needs root: its tests will skip (apt-get install $$package)"; \
	       continue; fi; \
	  echo "make: installing Debian's $$package for $$binary"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	    --no-install-recommends $$package >/dev/null; \
	done

# The checks, then the whole suite.
test: check debian-tools
	$(call with_test_redis,$(BIN)/python -m pytest)

# The checks, then the suite without the tests marked slow (setup.cfg [tool:pytest] markers): under a minute.
test-fast: check debian-tools
	$(call with_test_redis,$(BIN)/python -m pytest -m "not slow")

# The wheel and sdist built and checked (twine), the wheel installed into a fresh virtual environment outside the
# checkout, where the gateway is started and its files fetched (tools/package_check.py); .ci/run runs it after make
# test.
package-check: $(VENV)/.installed-test
	$(BIN)/python tools/package_check.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The example plugins (plugins/*) are for the tests only: installed into $(TEST_PLUGINS), a plain directory that
# the test run alone puts on sys.path and PYTHONPATH (conftest.py; importlib.metadata finds their entry points
# through the *.dist-info there), never into .venv's site-packages, which `make run` serves: with them there,
# token_auth would answer 401 to every token it does not know. Copies, not editable: a change to a plugin's
# sources installs them again. Older checkouts installed them editable into .venv: uninstalled here.
EXAMPLE_PLUGINS := $(wildcard plugins/*/pyproject.toml)
EXAMPLE_PLUGIN_SOURCES := $(shell find plugins -name '*.py' -not -path '*/tests/*' 2>/dev/null)
TEST_PLUGINS := $(VENV)/test-plugins

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml $(TEST_PLUGINS)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# The documentation site (docs/, Sphinx + furo + MyST), warnings as errors; its references are generated from
# the code (docs/_ext/wsgate_refs.py). The pages' examples are run by `make test` (tests/test_docs.py).
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

$(VENV)/.installed-docs: $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $@

$(TEST_PLUGINS)/.installed: $(VENV)/bin/python $(EXAMPLE_PLUGINS) $(EXAMPLE_PLUGIN_SOURCES)
	$(BIN)/python -m pip uninstall --quiet --yes wsgate-echo wsgate-token-auth wsgate-users 2>/dev/null || true
	rm -rf $(TEST_PLUGINS)
	$(BIN)/python -m pip install --quiet --no-deps --target $(TEST_PLUGINS) $(foreach p,$(EXAMPLE_PLUGINS),$(dir $(p)))
	touch $@

# Load test on loopback: the server pinned to core 0, picows clients to core 1 (a few minutes).
bench: $(VENV)/.installed-bench $(TEST_PLUGINS)/.installed
	$(BIN)/python benchmarks/run.py

# Opt-in: 100,000 idle clients on loopback against wsgate under gunicorn (several workers on one port, sharing the
# Redis on 127.0.0.1:6379), the load generator in several processes; RSS per connection, connect time, idle CPU,
# one broadcast to all. Under 10 minutes; appends its section to benchmarks/RESULTS.md.
bench-100k: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_100k.py

# The cost of one inbound message, step by step, in-process (benchmarks/RESULTS.md, "The cost of one inbound message"): defaults, then limits on.
profile-inbound: $(VENV)/.installed-test
	$(BIN)/python benchmarks/profile_inbound.py
	$(BIN)/python benchmarks/profile_inbound.py --limits

$(VENV)/.installed-bench: $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# RFC 6455 conformance (Autobahn|Testsuite, ../shared/conformance/autobahn): 1-7, 9, 10, then 12.1 and 13.1
# with compression. The first run on a machine builds the suite's root (about 4 minutes, needs root).
conformance: $(VENV)/.installed
	PYTHON=$(BIN)/python conformance/run.sh

# The chaos run (chaos/run.py): three nodes, Redis restarts, 1,000 clients losing their sockets; results in
# chaos/RESULTS.md. Loopback only, about 4 minutes, stops by itself; exits 1 unless nothing was lost.
chaos: $(VENV)/.installed-test
	$(BIN)/python chaos/run.py

# The fault model (faults/): every fault of the catalogue against real nodes and a private redis-server, every
# promise checked after each; results in faults/RESULTS.md. Loopback only, under 15 minutes; exits 1 on any broken
# promise. `make test` runs the quick part (tests/test_faults.py).
faults: $(VENV)/.installed-test
	$(BIN)/python -m faults.run --output faults/RESULTS.md

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
