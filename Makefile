# virnucpro_merge: every target sets up its own virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo_run

# Same hash seed for storing and re-running notebooks (set ordering, see NOTEBOOKS.md).
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.DEFAULT_GOAL := help
.PHONY: help install demo test unit bench clean

help: ## Show this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its test extras

demo: $(STAMP) ## Build the synthetic 8-worker run, merge it, print the report
	$(BIN)/virnucpro-merge demo $(DEMO)

unit: $(STAMP) ## Run the unit tests only
	$(BIN)/python -m pytest tests

test: unit ## Run the unit tests, then the notebooks under nbval

bench: $(STAMP) ## Run the merge benchmark (several minutes)
	$(BIN)/python benchmarks/bench_merge.py

clean: ## Remove the virtualenv, the demo run and build leftovers
	rm -rf $(VENV) $(DEMO) reports *.egg-info .pytest_cache
