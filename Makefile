# ModelPact: `make run` serves the app on one machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# The test suite runs against real PostgreSQL and Redis.
TEST_ENV := DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/modelpact \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/14 \
	REDIS_URL=redis://127.0.0.1:6379/15 \
	CHROMIUM_PATH=/usr/bin/chromium \
	HF_HUB_OFFLINE=1

# Type-checked by `make lint` (settings in pyproject.toml); migrations, tests and bench are excluded there.
MYPY_PACKAGES := core accounts audit models_registry agreements inference research records portal webhooks config

.PHONY: run test lint format venv system-deps-run system-deps-test services clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

system-deps-run:
	@scripts/system-deps.sh run

system-deps-test:
	@scripts/system-deps.sh test

services:
	@scripts/services.sh

run: $(STAMP) system-deps-run
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@echo
	@echo "ModelPact is starting at http://127.0.0.1:8000/  (web, GPU and CPU workers, beat; Ctrl-C stops them all)"
	@echo
	$(BIN)/honcho start -f Procfile.dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	MODELPACT_VAR_DIR=$$(mktemp -d) $(BIN)/mypy $(MYPY_PACKAGES)
	MODELPACT_VAR_DIR=$$(mktemp -d) $(BIN)/python manage.py makemigrations --check --dry-run

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) system-deps-test services lint
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var/modelpact.sqlite3 var/broker var/celerybeat-schedule* test-artifacts
