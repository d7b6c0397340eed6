# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
STAMP := $(VENV)/.jtcse-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
# dvc.yaml stages call `jtcse` and `python`: the project environment must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: env data run test test-fast clean-runs

env: $(STAMP)

# torch first, pinned: an open range on a machine without torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

data: env
	$(DVC) pull --quiet data.dvc
	@bash data/verify.sh >/dev/null && echo "data/ pulled and verified"

run: data
	$(DVC) repro
	@cat reports/sts_table.md

test: data
	$(PY) -m pytest -q

test-fast: env
	$(PY) -m pytest -q -m "not slow"
