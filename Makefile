# Two commands on a fresh machine: `make run` (the webhook, self-signed TLS, no cluster) and
# `make test` (format, lint, types, the whole suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443
PYTEST_ARGS ?=
LINT_PATHS := webhook tests $(wildcard benchmarks)

$(VENV)/.run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run

.PHONY: run test lint format bench-admission bench-coldstart

## run the webhook locally: self-signed TLS on https://localhost:8443, no cluster
run: $(VENV)/.run
	$(BIN)/kserve-cache serve --self-signed --cert-dir certs --no-cluster --host $(HOST) --port $(PORT)

## format check, lint, types, then the whole test suite on 2 workers
test: lint
	$(BIN)/pytest -n 2 -q $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)
