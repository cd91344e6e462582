# Corral: `make run` serves on embedded defaults; `make test` sets up and runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/corral serve

deps:
	./scripts/install-debian-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check registration edge_server node_image tests bench
	$(BIN)/ruff format --check registration edge_server node_image tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict registration edge_server node_image

pytest: $(STAMP) deps
	./scripts/run-tests.sh

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/registration.py

clean:
	rm -rf $(VENV) corral-data
