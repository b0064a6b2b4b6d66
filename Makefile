# The two commands of the README. Everything runs inside the project-local .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
export SPECROLLOUT_PLATFORM ?= cpu

.PHONY: setup quickstart test test-unit test-integration testbed bench

setup:
	bash tools/setup_cpu.sh

# Main job on the embedded defaults: builds (or reuses) the tiny testbed and its regime-tiny expansion, then runs it.
quickstart: setup
	$(PY) -m verl_specrollout.testing.quickstart

test: setup testbed
	$(PY) -m pytest tests -q

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests -q -m integration

testbed: setup
	$(PY) -m verl_specrollout.testing.testbed --size tiny
