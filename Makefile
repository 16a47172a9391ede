# The few commands a user needs. Every target works from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= cardiffnlp/twitter-roberta-base-emotion

.PHONY: setup lint test run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python packages (worker + exporter + embedded stack + dev tools) and the Kafka jars.
setup: $(BIN)/python
	$(BIN)/pip install -q -e ".[export,local,dev]"
	$(BIN)/emotion-stream local fetch

# One lint + type-check command, the same in CI.
lint: $(BIN)/python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Unit tests, then integration tests against a real Kafka broker and a real
# Triton server that the fixtures start on free loopback ports.
test: $(BIN)/python
	$(BIN)/pytest

clean:
	$(BIN)/emotion-stream local down || true
	rm -rf .local
