# Two commands on a fresh machine: `make run` (the webhook, self-signed TLS, no cluster) and
# `make test` (format, lint, types, the whole suite). Both create .venv on first use; activate
# it afterwards with `. .venv/bin/activate` (or call .venv/bin/kserve-cache directly).
# Images: `make image` builds the webhook and fetcher images, `make push` pushes them and prints
# their digests (REGISTRY=..., TAG=...; docker or podman, whichever is installed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443
PYTEST_ARGS ?=
LINT_PATHS := webhook tests constraints $(wildcard benchmarks)

REGISTRY ?= ghcr.io/kserve-cache
TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
PYTHON_IMAGE ?=
BUILD_FLAGS ?=
IMAGE_webhook = $(REGISTRY)/kserve-cache:$(TAG)
IMAGE_fetcher = $(REGISTRY)/kserve-cache-fetcher:$(TAG)

# pyproject.toml: requires-python = ">=3.11,<3.14". Checked before any venv is made, so a wrong
# interpreter fails with this message and leaves no half-made .venv behind.
define check_python
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' \
	  2>/dev/null || { \
	  echo "error: kserve-cache needs Python 3.11, 3.12 or 3.13, but $(PYTHON) is" \
	    "$$($(PYTHON) --version 2>&1 || echo 'not installed'); try: make $@ PYTHON=python3.12" >&2; \
	  exit 1; }
endef

# Make the venv (if missing) and install $(1) into it. A venv made by this run is removed again
# when the install fails; an existing one is kept (the next run retries).
define install
	$(check_python)
	@new=; if [ ! -x $(BIN)/python ]; then $(PYTHON) -m venv $(VENV) && new=1 || { rm -rf $(VENV); exit 1; }; fi; \
	{ $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -e '$(1)'; } || { \
	  if [ -n "$$new" ]; then rm -rf $(VENV); echo "error: install failed; removed the new $(VENV)" >&2; \
	  else echo "error: install failed; $(VENV) kept as it was" >&2; fi; exit 1; }
	@echo "$(VENV) ready; activate it with: . $(BIN)/activate"
endef

$(VENV)/.run: pyproject.toml
	$(call install,.)
	touch $@

$(VENV)/.dev: pyproject.toml
	$(call install,.[dev])
	touch $@ $(VENV)/.run

.PHONY: run test lint format lock image image-webhook image-fetcher push push-webhook push-fetcher \
	bench-admission bench-coldstart

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

## rewrite constraints/runtime.txt (the images' exact pins) from the dev venv
lock: $(VENV)/.dev
	$(BIN)/python constraints/update.py

## build both images: $(REGISTRY)/kserve-cache:$(TAG) and $(REGISTRY)/kserve-cache-fetcher:$(TAG)
image: image-webhook image-fetcher

image-webhook image-fetcher: image-%:
	@[ -n "$(ENGINE)" ] || { echo "error: neither docker nor podman found; set ENGINE=..." >&2; exit 1; }
	@mkdir -p build
	DOCKER_BUILDKIT=1 $(ENGINE) build --target $* -t $(IMAGE_$*) --iidfile build/image-$*.iid \
	  $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(BUILD_FLAGS) .
	@echo "built $(IMAGE_$*) (image id $$(cat build/image-$*.iid))"

## push both images and print the digests to pin (kustomize images: ... digest:)
push: push-webhook push-fetcher
	@echo "pin them in your overlay's images: entries, e.g."
	@for t in webhook fetcher; do cat build/digest-$$t; done

push-webhook push-fetcher: push-%: image-%
	$(ENGINE) push $(IMAGE_$*)
	@$(ENGINE) image inspect --format '{{index .RepoDigests 0}}' $(IMAGE_$*) | tee build/digest-$*
