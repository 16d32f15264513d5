# falrt — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop chromium test test-fast fuzz proto lint bench bench-check bench-http bench-autoscale bench-coldstart clean

$(STAMP): pyproject.toml
	@echo "installing falrt and its dependencies into $(VENV) with pip (quiet; 20-60 s the first" \
	  "time, then only again when pyproject.toml changes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev,ray]'
	touch $(STAMP)

# Node.js and tests/node's packages (the grpc-js client of tests/test_tls.py): installed
# with apt and `npm ci` when missing (scripts/node.sh).
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package-lock.json
	scripts/node.sh

# Chromium for the dashboard's browser test (tests/test_dashboard.py): installed with apt
# when missing (scripts/chromium.sh; quiet and quick when it is there).
chromium:
	@scripts/chromium.sh >/dev/null

proto: $(STAMP)
	$(BIN)/python scripts/protogen.py

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

# Stops the server of `make run` and the test PostgreSQL of `make test` (each if it runs).
stop: $(STAMP)
	$(BIN)/python scripts/run_local.py --stop
	scripts/postgres.sh stop

# The tests need a real Prometheus too (tests/test_metrics.py): scripts/prometheus.sh
# installs Debian's package when it is missing and prints the binary's path.
# The tests need a real PostgreSQL: scripts/postgres.sh starts (or reuses) a private one,
# unless FALRT_TEST_POSTGRES_DSN already names a database; it keeps running for the next run
# (a start costs seconds), and `make stop` stops it. Two runs, both always made (see
# tests/conftest.py): all but the `bench`, `docker` and `ray` tests on TEST_WORKERS
# pytest-xdist workers, one test file per worker at a time; then the benchmarks, the Docker
# tests and the Ray tests on their own, one after another (tests/test_ray_backend.py runs a
# four-node Ray cluster, up to 4 runners and two more servers: 60-110 s alone on 2 cores).
# The end-to-end tests mostly wait on their servers and runners, so there are more workers
# than cores: on 2 cores the first run took 110 s with
# 3 or 4 workers (the torch install of test_embeddings.py is the longest path), 129 s with
# 6, where a test that races a 2 s keep_alive failed; the whole suite ran 321 s serially.
TEST_WORKERS ?= 3
test: $(STAMP) $(NODE_STAMP) chromium
	dsn=$${FALRT_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)} || exit 1; \
	export FALRT_TEST_POSTGRES_DSN=$$dsn; status=0; \
	prometheus=$$(scripts/prometheus.sh) || exit 1; export FALRT_TEST_PROMETHEUS=$$prometheus; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  -m "not bench and not docker and not ray" || status=$$?; \
	$(BIN)/pytest -m "bench or docker or ray" || status=$$?; \
	[[ -n "$(FALRT_TEST_POSTGRES_DSN)" ]] || echo "The test PostgreSQL keeps running for the" \
	  "next make test (scripts/postgres.sh, 127.0.0.1:$${FALRT_PG_PORT:-54329}); make stop stops it."; \
	exit $$status

# The unit tests only: in-process, no server, database or Docker; a few seconds.
test-fast: $(STAMP)
	$(BIN)/pytest -m unit

# The property suite (tests/test_properties.py) run long: FUZZ_EXAMPLES cases per property
# instead of `make test`'s 20 (bench/fuzz.py; 5000 take about 40 min on 2 cores).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --examples $(FUZZ_EXAMPLES)

lint: $(STAMP)
	$(BIN)/ruff check falrt shim cli tests bench examples
	$(BIN)/mypy falrt shim cli

bench: $(STAMP)
	$(BIN)/python bench/overhead.py --out bench/overhead.json
	dsn=$${FALRT_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)} && \
	  $(BIN)/python bench/queue_bench.py --postgres $$dsn --out bench/queue.json

# The regression check to run before resolving a change to the hot path (not a CI gate: a
# shared machine is too noisy to fail on a timing): a quick h2load run of bench/overhead.py
# (about 20 s; scripts/h2load.sh installs h2load when missing), its ratios to the bare echo
# compared with those recorded in bench/ratios.json; it prints each that got worse by more
# than 25% and fails then. After an improvement, record the new ratios from a full run:
#   .venv/bin/python bench/overhead.py --h2load --no-mlp --record bench/ratios.json
bench-check: $(STAMP)
	$(BIN)/python bench/overhead.py --h2load --quick --no-mlp --check bench/ratios.json

# The HTTP gateway next to the gRPC edge and bare gRPC and ASGI echoes: bench/http.json
# (about a minute; bench/RESULTS.md, "HTTP gateway").
bench-http: $(STAMP)
	$(BIN)/python bench/gateway.py --out bench/http.json

# The autoscaling picture: docs/autoscale.png and bench/autoscale.json (about 40 s).
bench-autoscale: $(STAMP)
	$(BIN)/python bench/autoscale.py

# Cold starts, process and docker backends (the docker part needs scripts/docker.sh; ~1 min).
bench-coldstart: $(STAMP)
	$(BIN)/python bench/coldstart.py --out bench/coldstart.json

clean:
	rm -rf $(VENV) build *.egg-info
