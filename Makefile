# steam-persona — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU build (on this project's machines it installs from local disk). GPU users:
#   make demo TORCH_SPEC="torch"   (or install their CUDA torch into .venv first)
TORCH_SPEC ?= torch==2.13.0
# llama-cpp-python is built from source; text-only CPU build is the quickest.
# CUDA: make demo CMAKE_ARGS="-DGGML_CUDA=on"
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
# Python 3.12 for the Dify plugin runtime (dify_plugin >= 0.10 needs it).
PYTHON312 ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)
export STEAM_PERSONA_PY312 := $(strip $(PYTHON312))

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/steam-train demo

clean:
	rm -rf demo_run build dist .pytest_cache *.egg-info
