# The project's verbs. CI runs the same targets a person does (.ci/run -> make test).
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# buf runs protoc from grpcio-tools with the venv's python, so the venv comes first.
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: help setup wrk postgresql gen gen-check lint breaking test chaos bench bench-validation bench-pg-drivers bench-pg-functions pg-races profile profile-pg run clean

help:
	@echo "make run        set up, then run NATS, Consul, the control plane, the services and Envoy (N=2: two of each)"
	@echo "make test       set up, check generated code and lint, run every test (WORKERS=2: on two workers); then the store, saga, fault, model and event tests on PostgreSQL"
	@echo "make setup      install into the repo: .venv (pinned), Consul, nats-server, npm packages, dev JWT keys (idempotent)"
	@echo "make gen        regenerate gen/, the clients, docs/openapi.json, docs/api-reference.md and docs/events.md from proto/"
	@echo "make gen-check  regenerate and fail if any generated file differs from what is committed"
	@echo "make lint       buf lint + format, ruff, mypy"
	@echo "make postgresql install PostgreSQL 15 (Debian's package; make test needs it)"
	@echo "make breaking   check proto/ against the last released contract (buf breaking + REST routes)"
	@echo "make chaos      the whole suite with the long fault profiles (about 14 min with WORKERS=2, stopped at 30), fault table at the end; then its PostgreSQL pass (about 6 min, stopped at 20)"
	@echo "make bench      shopmesh on SQLite (events on and off, mutual TLS) and on PostgreSQL against the FastAPI baseline, side by side (bench/results/, about 12 min)"
	@echo "make bench-validation  CPU per CreateOrder of checking the request, in process (about 10 s)"
	@echo "make bench-pg-drivers  asyncpg vs psycopg 3 on one order's transactions, real PostgreSQL (about 20 min)"
	@echo "make bench-pg-functions  the same order, each write one PL/pgSQL call, vs today's shape (about 3 min)"
	@echo "make pg-races   the stores' races on PostgreSQL under READ COMMITTED, two connections each (tests, about 25 s)"
	@echo "make profile    where each service's time goes under the order load (py-spy; POSTGRES=1: on PostgreSQL)"
	@echo "make profile-pg on PostgreSQL: statements per order per service, CPU of the server vs the services"
	@echo "make clean      reset the demo data: delete var/ (databases, logs, dev keys) and the tools' caches"

TS := clients/typescript
SDK := clients/python/shopmesh_sdk/gen
# What `make gen` writes; gen-check fails if any of it differs from what is committed.
GENERATED := gen/ docs/openapi.json docs/api-reference.md docs/events.md $(TS)/src/gen $(SDK)

setup: $(VENV)/.installed .tools/bin/consul var/jwt/jwks.json $(TS)/node_modules/.installed .tools/bin/nats-server

# The load generator of `make bench` (and of its smoke test in `make test`).
wrk:
	@tools/install-wrk

# PostgreSQL 15, whose server the tests start (shopmesh/postgres.py): Debian's package.
postgresql:
	@tools/install-postgresql

# The TypeScript client's toolchain and runtime, exactly as package-lock.json pins them.
$(TS)/node_modules/.installed: $(TS)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20 or newer" >&2; exit 1; }
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Consul: the one on PATH, else Debian's package unpacked into .tools/ (see the script).
.tools/bin/consul:
	tools/install-consul

# nats-server (JetStream): the one on PATH, else Debian's package unpacked into .tools/ (see the script).
.tools/bin/nats-server:
	tools/install-nats

# libfaketime, for the clock-jump test: Debian's package unpacked into .tools/ (see the script).
.tools/lib/libfaketime.so.1:
	tools/install-faketime

# The dev JWT key pair; Envoy reads the JWKS, `shopmesh token` signs with the key.
var/jwt/jwks.json: $(VENV)/.installed
	$(VENV)/bin/shopmesh keys

# Re-installs only when pyproject.toml changes; pip itself is idempotent too.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=..." >&2; exit 1; }
	@echo "== setting up $(VENV) (Python packages pinned in pyproject.toml)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

gen: setup
	@echo "== generating gen/python and gen/descriptor.binpb from proto/"
	buf generate
	buf build --as-file-descriptor-set -o gen/descriptor.binpb
	python -m shopmesh.openapi gen/descriptor.binpb docs/openapi.json
	python -m shopmesh.api_reference gen/descriptor.binpb docs/api-reference.md
	python -m shopmesh.event_catalogue gen/descriptor.binpb docs/events.md
	buf generate --template $(TS)/buf.gen.yaml
	buf generate --template clients/python/buf.gen.yaml

gen-check: gen
	@git diff --exit-code --stat -- $(GENERATED) \
		&& test -z "$$(git status --porcelain -- $(GENERATED))" \
		|| { echo "error: generated code is stale: run 'make gen' and commit it" >&2; exit 1; }
	@echo "generated code is fresh ($(GENERATED))"

lint: setup
	@echo "== buf lint, buf format, ruff, mypy"
	buf lint
	buf format --diff --exit-code
	ruff check services gateway shopmesh tests tools clients/python bench
	ruff format --check services gateway shopmesh tests tools clients/python bench
	mypy

breaking: setup
	tools/breaking

# The tests that make test and make chaos run on PostgreSQL too, after the whole suite on
# SQLite: the stores', the saga's, the faults' and the model's. Of these files
# --backend postgresql keeps the tests that take the backend and are not sqlite_only
# (tests/conftest.py); the server is the session's own, started before the first test.
POSTGRES_TESTS := \
	tests/unit/test_open_store.py tests/unit/test_order_store.py tests/unit/test_order_quota.py \
	tests/unit/test_store_reads.py tests/unit/test_inventory.py tests/unit/test_payment.py \
	tests/unit/test_order.py tests/unit/test_order_reads.py tests/unit/test_migrations_backends.py \
	tests/unit/test_saga_leases.py tests/unit/test_saga_parking.py tests/unit/test_saga_steps.py \
	tests/unit/test_outbox.py tests/unit/test_store_events.py tests/unit/test_order_log.py \
	tests/unit/test_notification.py tests/unit/test_reporting_projection.py \
	tests/service/test_saga.py tests/service/test_model.py tests/system/test_faults.py
# WORKERS=2 runs on two workers (pytest-xdist), each running whole test files, so a
# file's module-scoped servers stay in one process: about 11 min instead of 20 here; the
# tests marked `alone` (they assert against the clock) run afterwards in one process, so
# the other worker's system cannot slow them. Not the default yet: a timing-bound test
# flaked on two workers before the `alone` pass existed, and it has not had enough runs.
WORKERS ?= 0
# pytest's "no tests collected" (exit 5) fails a pass, unless PYTEST_ARGS narrowed the run
# to tests none of which is in it.
NONE_IS_FINE = $(if $(strip $(PYTEST_ARGS)),|| test $$? -eq 5)
# $(call passes,PREFIX,ARGS): pytest ARGS, run as PREFIX (env, timeout) says; on WORKERS
# workers for all but the `alone` tests, then those in one process.
passes = $(if $(filter 0,$(WORKERS)),$(1) pytest $(2) $(NONE_IS_FINE),{ $(1) pytest -n $(WORKERS) --dist loadfile -m "not alone" $(2) $(NONE_IS_FINE); } \
	&& echo "== the tests marked alone, in one process" && { $(1) pytest -m alone $(2) || test $$? -eq 5; })
POSTGRES_ARGS = --backend postgresql $(PYTEST_ARGS) $(POSTGRES_TESTS)

test: setup wrk postgresql .tools/lib/libfaketime.so.1 gen-check lint breaking
	@echo "== pytest (every test, on SQLite)"
	$(call passes,,$(PYTEST_ARGS))
	@echo "== pytest --backend postgresql (the stores, the saga, the faults, the model)"
	$(call passes,,$(POSTGRES_ARGS))

# Starts its own PostgreSQL 15 for the PostgreSQL path (under var/bench), stops it by PID.
bench: setup wrk postgresql
	python -m bench.run

bench-validation: setup
	python -m bench.validation

# Starts its own PostgreSQL 15 (Debian's binaries) in a temporary directory, stops it by PID.
bench-pg-drivers: setup postgresql
	python -m bench.pg_drivers

# bench/pg_functions.py's writes against today's shape (asyncpg without the reset query).
bench-pg-functions: setup postgresql
	python -m bench.pg_drivers --quick --drivers asyncpg-noreset asyncpg-functions \
		--workloads hot spread --concurrency 16 --passes 3 --seconds 10

# The race tests alone (also part of make test): statement by statement on bench/pg_sql.py's
# port, then on the stores themselves.
pg-races: setup postgresql
	pytest tests/service/test_pg_races.py tests/service/test_store_races.py tests/service/test_outbox_races.py -v $(PYTEST_ARGS)

# py-spy attaches to the running services: it needs ptrace (root, or ptrace_scope 0).
profile: setup $(if $(POSTGRES),postgresql)
	python -m bench.profile $(if $(POSTGRES),--postgres)

# shopmesh on its own PostgreSQL 15 (under var/pg-profile), stopped by PID at the end.
profile-pg: setup postgresql
	python -m bench.pg_profile

# The same tests with the long profiles: more saga-model runs and steps, longer flapping.
chaos: setup wrk postgresql .tools/lib/libfaketime.so.1
	$(call passes,env SHOPMESH_CHAOS=1 timeout 1800,$(PYTEST_ARGS))
	$(call passes,env SHOPMESH_CHAOS=1 timeout 1200,$(POSTGRES_ARGS))

# N instances of each service: make run N=2
N ?= 1
run: setup
	shopmesh run --instances $(N)

# The next `make run` starts on fresh demo data (services/demo_data.json) with new dev keys.
clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
