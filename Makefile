# The two commands that matter: `make run` (local app) and `make test` (all tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run stop test lint bench-quick clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-clip.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Start Azurite and PostgreSQL, write local.settings.json if missing, create the schema, `func start`.
run: setup
	$(BIN)/python -m scripts.local run

## Stop the services `make run` started.
stop:
	$(BIN)/python -m scripts.local stop

## Lint, type-check and run the whole test suite against real PostgreSQL+pgvector and Azurite.
test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Benchmarks at small sizes (a smoke test, about 3 minutes); bench/README.md has the full runs.
bench-quick: setup
	$(BIN)/python bench/run.py all --quick

clean: stop
	rm -rf .local
