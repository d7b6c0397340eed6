# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
STAMP := $(VENV)/.jtcse-installed
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
LOCK := requirements.lock
# Where the lock's torch==2.13.0+cpu comes from besides PyPI: pip's find-links (a local wheel folder) and,
# if set, TORCH_INDEX (e.g. make env TORCH_INDEX=https://download.pytorch.org/whl/cpu).
WHEEL_SOURCES := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
# dvc.yaml stages call `jtcse` and `python`: the project environment must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: env lock data run test test-fast lint format clean-runs

env: $(STAMP)

$(UV):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)

# Exactly the versions in requirements.lock (no resolution, nothing else), then jtcse itself without deps.
# Then site-packages compiled to bytecode once: uv installs none, and where PYTHONDONTWRITEBYTECODE=1 (this
# project's machines, CI) Python never caches it, so every `jtcse` and `dvc` process compiled torch and
# transformers anew (`jtcse evaluate` of a tiny model 9.9 s -> 4.7 s; the test suite starts ~200 of them).
# The excluded files are Python 3.12 syntax that 3.11 never imports.
$(STAMP): $(LOCK) pyproject.toml Makefile | $(UV)
	$(UV) pip install --quiet --python $(PY) --no-deps $(WHEEL_SOURCES) -r $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -m compileall -q -j 0 -x '(py312_intrinsics|_typing_312)\.py$$' \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null \
		|| echo "make env: some files of site-packages did not compile to bytecode (imports still work, slower)"
	@touch $@

# Refresh requirements.lock after a change to pyproject.toml's dependencies: pins already in the lock are
# kept where they still fit; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest releases.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test --extra mteb --extra onnx -c lock-constraints.txt --python-version 3.11 \
		$(WHEEL_SOURCES) $(LOCK_FLAGS) --custom-compile-command "make lock" --quiet -o $(LOCK)

data: env
	$(DVC) pull --quiet data.dvc
	@bash data/verify.sh >/dev/null && echo "data/ pulled and verified"

run: data
	$(DVC) repro
	@cat reports/sts_table.md reports/transfer_table.md

# ruff: lint (pycodestyle, pyflakes, import order, bugbear, pyupgrade) and the formatter's check, line length 120.
LINT_PATHS := jtcse flows bench tests
lint: env
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Rewrites the code in place: the formatter, then ruff's safe fixes.
format: env
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

# The [mteb] extra is in the lock: its tests must run here, not skip.
test: data lint
	JTCSE_REQUIRE_MTEB=1 $(PY) -m pytest -q

test-fast: env
	JTCSE_REQUIRE_MTEB=1 $(PY) -m pytest -q -m "not slow"
