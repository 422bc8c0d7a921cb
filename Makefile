# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443

$(BIN)/kserve-cache: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install run test lint check bench-admission bench-coldstart
install: $(BIN)/kserve-cache

## run the webhook locally: self-signed TLS, no cluster
run: install
	$(BIN)/kserve-cache serve --self-signed --cert-dir certs --host $(HOST) --port $(PORT)

## format check, lint, types, then the whole test suite
test: install lint
	$(BIN)/pytest -n 2 -q

lint: install
	$(BIN)/ruff format --check webhook tests benchmarks
	$(BIN)/ruff check webhook tests benchmarks
	$(BIN)/mypy
