# Every target sets up the locked environment by itself: only Python 3.11 is needed.
SHELL := /bin/bash
PYTHON ?= python3.11
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: env up up-cluster down test bench

$(UV):
	$(PYTHON) -m pip install --user --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

env: $(VENV)/.synced

# Airflow (api-server, scheduler, dag-processor, triggerer) and the model server on
# 127.0.0.1, state under $(PIPEWRIGHT_HOME) or .pipewright/; `make down` stops them all.
up: env
	$(VENV)/bin/python -m pipelines.services up

# The cluster mode: the same Airflow with the CeleryExecutor and two Celery workers, PostgreSQL
# (Airflow's database), Redis (the broker) and MariaDB (ML Metadata), all on 127.0.0.1 with
# their state under the home; `make down` stops it too.
up-cluster: env
	$(VENV)/bin/python -m pipelines.cluster up

down:
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python -m pipelines.services down; \
	else echo "nothing to stop: no environment in $(VENV)"; fi

# The suite on TEST_WORKERS pytest-xdist worker processes (one per core here). A test file
# runs whole on one worker, in order: scenario files (test_services' nights) build on their
# earlier tests. Files are handed out in collection order (tests/airflow, the longest, first),
# not xdist's default of the files with the most tests first, which left the long Airflow
# files for the end. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: env
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--durations=25

bench: env
	for b in bench/bench_*.py bench/serving_bench.py; do $(VENV)/bin/python $$b || exit 1; done
