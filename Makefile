# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch goes in first and pinned: a plain `torch` requirement would pull a CUDA build.
TORCH ?= torch==2.13.0
export KELM_DATA_DIR ?= $(abspath ../shared/data)
# The import-linter layers contract of pyproject.toml (docs/architecture.md).
LINT_IMPORTS = $(PYTHON) -c "from importlinter.cli import lint_imports_command; lint_imports_command(['--no-cache'])"

.PHONY: install browser demo test lint bench

install:
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test]"

# Debian's Chromium for the page's browser test (tests/test_serve_page.py), installed when this
# runs as root on Debian; elsewhere that test is skipped unless KELM_REQUIRE_BROWSER is set.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	  else echo "no chromium: the browser test is skipped (install Debian's chromium package)"; fi; }

demo: install
	kelm demo

test: install browser
	$(LINT_IMPORTS)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check src tests bench
	$(LINT_IMPORTS)

bench: install
	$(PIP) install --quiet -e ".[bench]"
	$(PYTHON) bench/kg_import.py
	$(PYTHON) bench/subgraph_latency.py
