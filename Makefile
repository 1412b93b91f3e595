# Two commands matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Test workers: one per core, at most 4 (each starts its own PostgreSQL cluster). Tests of
# one module stay on one worker, so a module's shared stack is started once.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(TEST_WORKERS) --dist loadscope

.PHONY: run test install postgres lint format e2e bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

## make run: resolver + local nats-server on 127.0.0.1, data in ./data (init on first run)
run: install
	$(BIN)/nats-iam-resolver dev --data-dir data

## PostgreSQL server binaries for the tests (Debian packages), when missing
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then \
		echo "PostgreSQL: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1)"; \
	else \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi

## make test: install everything the tests need, lint, then the whole suite (e2e included)
test: install postgres lint
	$(BIN)/pytest -ra $(XDIST) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## only the slow end-to-end tests (real nats-server processes)
e2e: install postgres
	$(BIN)/pytest -ra -m e2e $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
