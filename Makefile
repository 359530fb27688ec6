# Every target creates .venv on first use; a fresh clone needs only Python >= 3.11 and make.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export ITRESUME_HOME ?= $(CURDIR)/.itresume
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint format dev stop bench clean

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the main job on embedded defaults: simulator + embedded PostgreSQL, last 7 days
	$(BIN)/itresume-demo

dev: $(STAMP)  ## Dagster UI + daemon on the demo environment: http://127.0.0.1:3000 (DAGSTER_PORT)
	$(BIN)/itresume-dev

stop:  ## stops what `make demo` and `make dev` left running: the UI launcher, the embedded PostgreSQL
	@if [ -x $(BIN)/itresume-dev ]; then $(BIN)/itresume-dev stop; fi

test: $(STAMP)  ## the whole suite (uses ITRESUME_TEST_DATABASE_URL, else an embedded PostgreSQL)
	$(BIN)/python -m pytest

bench: $(STAMP)  ## the performance targets in one run: own ingest vs server COPY vs naive, RSS, metrics, backfill
	$(BIN)/python -m benchmarks.ingest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: stop
	rm -rf $(VENV) .itresume .pytest_cache .ruff_cache .hypothesis *.egg-info
