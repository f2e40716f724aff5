# The project's verbs. CI runs the same targets a person does (.ci/run -> make test).
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# buf runs protoc from grpcio-tools with the venv's python, so the venv comes first.
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: help setup gen gen-check lint test run clean

help:
	@echo "make run        set up, then start inventory, payment and order with demo data"
	@echo "make test       set up, check generated code and lint, run every test"
	@echo "make setup      create .venv and install pinned dependencies (idempotent)"
	@echo "make gen        regenerate gen/ from proto/ (buf generate + descriptor set)"
	@echo "make gen-check  regenerate and fail if gen/ differs from what is committed"
	@echo "make lint       buf lint + format, ruff, mypy"

setup: $(VENV)/.installed

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

gen-check: gen
	@git diff --exit-code --stat -- gen/ && test -z "$$(git status --porcelain -- gen/)" \
		|| { echo "error: gen/ is stale or has untracked files: run 'make gen' and commit gen/" >&2; exit 1; }
	@echo "gen/ is fresh"

lint: setup
	@echo "== buf lint, buf format, ruff, mypy"
	buf lint
	buf format --diff --exit-code
	ruff check services tests tools
	ruff format --check services tests tools
	mypy

test: setup gen-check lint
	@echo "== pytest"
	pytest $(PYTEST_ARGS)

run: setup
	python -m services.stack

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
