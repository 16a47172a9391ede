# The few commands a user needs. Every target works from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= cardiffnlp/twitter-roberta-base-emotion

.PHONY: setup lint test faults run stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python packages (worker + exporter + embedded stack + dev tools) and the Kafka jars.
# A stamp keeps `make run` from reinstalling (and needing the package index) every time;
# it is redone when the dependencies change.
SETUP_STAMP := $(VENV)/.setup-done
setup: $(SETUP_STAMP)
$(SETUP_STAMP): pyproject.toml compose/kafka/pom.xml | $(BIN)/python
	$(BIN)/pip install -q -e ".[export,local,dev]"
	$(BIN)/emotion-stream local fetch
	touch $@

# One lint + type-check command, the same in CI.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Unit tests, then integration tests against a real Kafka broker and a real
# Triton server that the fixtures start on free loopback ports. The fault matrix's
# slow rows (crashes, restarts, outages, broker faults; docs/guarantees.md) are
# `make faults`, a CI stage of their own; so are the Helm chart's tests
# (`bash charts/ci/stage.sh`, which builds Helm first).
test: setup
	$(BIN)/pytest -m "not slow and not chart"

faults: setup
	$(BIN)/pytest -m slow

# The README's first command: export MODEL (a hub id needs internet; a local model
# folder does not), start the local Kafka + Triton and a worker, feed sample tweets and
# print them classified, live, until Ctrl-C. Everything keeps running until `make stop`.
# EXPORT_ARGS passes options to `emotion-stream export` (e.g. --min-agreement 0 --max-drift 1 for a test model).
run: setup
	MODEL="$(MODEL)" EXPORT_ARGS="$(EXPORT_ARGS)" bash compose/run_demo.sh run

# Stop the worker `make run` started, then the local Kafka + Triton.
stop:
	bash compose/run_demo.sh stop

# `stop` first: `local down` alone would leave `make run`'s worker behind.
clean: stop
	rm -rf .local
