# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch goes in first and pinned: a plain `torch` requirement would pull a CUDA build.
TORCH ?= torch==2.13.0
export KELM_DATA_DIR ?= $(abspath ../shared/data)
# The import-linter layers contract of pyproject.toml (docs/architecture.md).
LINT_IMPORTS = $(PYTHON) -c "from importlinter.cli import lint_imports_command; lint_imports_command(['--no-cache'])"

.PHONY: install demo test lint bench

install:
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test]"

demo: install
	kelm demo

test: install
	$(LINT_IMPORTS)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check src tests bench
	$(LINT_IMPORTS)

bench: install
	$(PIP) install --quiet -e ".[bench]"
	$(PYTHON) bench/kg_import.py
	$(PYTHON) bench/subgraph_latency.py
