# falrt — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop test proto lint bench bench-autoscale bench-coldstart clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python scripts/protogen.py

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

stop: $(STAMP)
	$(BIN)/python scripts/run_local.py --stop

# The tests need a real PostgreSQL: scripts/postgres.sh starts (or reuses) a private one,
# unless FALRT_TEST_POSTGRES_DSN already names a database.
test: $(STAMP)
	dsn=$${FALRT_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)} && \
	  FALRT_TEST_POSTGRES_DSN=$$dsn $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check falrt shim cli tests bench examples
	$(BIN)/mypy falrt shim cli

bench: $(STAMP)
	$(BIN)/python bench/overhead.py --out bench/overhead.json
	dsn=$${FALRT_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)} && \
	  $(BIN)/python bench/queue.py --postgres $$dsn --out bench/queue.json

# The autoscaling picture: docs/autoscale.png and bench/autoscale.json (about 40 s).
bench-autoscale: $(STAMP)
	$(BIN)/python bench/autoscale.py

# Cold starts, process and docker backends (the docker part needs scripts/docker.sh; ~1 min).
bench-coldstart: $(STAMP)
	$(BIN)/python bench/coldstart.py --out bench/coldstart.json

clean:
	rm -rf $(VENV) build *.egg-info
