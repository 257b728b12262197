# virnucpro_merge: every target sets up its own virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo_run
REPORT := reports
# nbval: the kernel is this venv's Python; the sanitize file masks what varies by machine.
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

# Same hash seed for storing and re-running notebooks: sets print in one order.
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.DEFAULT_GOAL := help
.PHONY: help install demo report notebooks test lint unit nbval torture bench clean

help: ## Show this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its test extras

demo: $(STAMP) ## Build the synthetic 8-worker run, merge it, write its report and render reports/*.html
	$(BIN)/virnucpro-merge demo $(DEMO)
	mkdir -p $(REPORT)
	$(BIN)/virnucpro-merge report $(DEMO) --merged $(DEMO)/embeddings.h5 -o $(REPORT)/demo_run.html
	$(BIN)/python notebooks/render.py html --output-dir $(REPORT)

report: $(STAMP) ## Execute the notebooks and render them to reports/*.html (no demo run)
	$(BIN)/python notebooks/render.py html --output-dir $(REPORT)

notebooks: $(STAMP) ## Re-execute the notebooks in place, strip metadata (review the diff, then commit)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.record_timing=False \
		notebooks/[0-9][0-9]_*.ipynb
	$(BIN)/python notebooks/render.py clean

lint: $(STAMP) ## Check style and imports (ruff) and types (mypy)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP) ## Run the unit tests and the docstring examples
	$(BIN)/python -m pytest tests virnucpro_merge --doctest-modules

nbval: $(STAMP) ## Run the notebooks under nbval only (outputs compared)
	$(BIN)/python -m pytest $(NBVAL) notebooks

test: lint unit nbval ## Everything CI checks: linters, unit tests and doctests, notebooks under nbval

torture: $(STAMP) ## Kill 50 merges at random moments; print which phases the kills hit
	$(BIN)/python -m tests.killing --trials 50

bench: $(STAMP) ## Run the merge and ID-validation benchmarks (several minutes)
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_validation.py

clean: ## Remove the virtualenv, the demo run and build leftovers
	rm -rf $(VENV) $(DEMO) reports *.egg-info .pytest_cache
