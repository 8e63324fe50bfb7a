# One-command entry points. Every target that needs Python depends on the virtual environment (make setup).
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Table 1 sweep settings: the paper's budget on a GPU box, the quick one on a CPU (override: make reproduce-table1 BUDGET=...).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
BUDGET ?= $(if $(HAS_GPU),paper,quick)
LAUNCHER ?= local
RUNS ?= runs
EXTRA ?=

.PHONY: setup lock test lint data params bench bench-transformer bench-data reproduce-table1 table1 figures clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

lock: $(STAMP)
	{ echo "# Every package of the environment, pinned exactly (pip freeze of a fresh \`make setup\`; Python 3.11, x86_64)."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^stn'; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

data: $(STAMP)
	$(PY) -m stn.data.make

params: $(STAMP)
	$(PY) -m stn.models.params

bench: bench-transformer bench-data

bench-transformer: $(STAMP)
	$(PY) -m stn.bench.transformer

bench-data: $(STAMP)
	$(PY) -m stn.bench.data

# The paper's Table 1 (+ TC) from your own runs, next to the paper's numbers: results/table1.{md,csv,tex}.
reproduce-table1: $(STAMP)
	@echo "Table 1 sweep: budget=$(BUDGET) launcher=$(LAUNCHER) runs in $(RUNS)/table1"
	$(PY) -m stn.train --multirun experiment=table1 budget=$(BUDGET) hydra/launcher=$(LAUNCHER) paths.runs_dir=$(RUNS) $(EXTRA)
	$(MAKE) table1 figures RUNS=$(RUNS)

table1: $(STAMP)
	$(PY) -m stn.results table1 --runs $(RUNS)/table1 --out results

figures: $(STAMP)
	$(PY) -m stn.figures table1 --runs $(RUNS)/table1 --out results/figures/table1_transformations.png

clean-venv:
	rm -rf $(VENV)
