# Every target sets up the locked environment by itself: only Python 3.11 is needed.
SHELL := /bin/bash
PYTHON ?= python3.11
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: env up down test bench

$(UV):
	$(PYTHON) -m pip install --user --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

env: $(VENV)/.synced

up: env
	$(VENV)/bin/pipewright run penguin

test: env
	$(VENV)/bin/python -m pytest -q

bench: env
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
