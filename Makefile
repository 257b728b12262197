# virnucpro_merge: every target sets up its own virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.installed-docs-stamp
DEMO   := demo_run
REPORT := reports
SITE   := docs/_build/html
# nbval: the kernel is this venv's Python; the sanitize file masks what varies by machine.
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

# Same hash seed for storing and re-running notebooks: sets print in one order.
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.DEFAULT_GOAL := help
.PHONY: help install demo docs notebooks test lint unit unit-fast nbval torture bench clean

help: ## Show this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The demo and the docs need the package with its docs extra only (not the test stack).
$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its test extras

demo: $(DOCS_STAMP) ## Build the synthetic 8-worker run, merge it, write its report, build the docs site
	$(BIN)/virnucpro-merge demo $(DEMO)
	mkdir -p $(REPORT)
	$(BIN)/virnucpro-merge report $(DEMO) --merged $(DEMO)/embeddings.h5 -o $(REPORT)/demo_run.html
	$(MAKE) --no-print-directory docs
	@echo "the demo run's report: $(CURDIR)/$(REPORT)/demo_run.html"
	@echo "the documentation site: $(CURDIR)/$(SITE)/index.html"

docs: $(DOCS_STAMP) ## Build the documentation site into docs/_build/html (read afresh, warnings are errors; opens offline)
	$(BIN)/sphinx-build -q -E -W --keep-going -n -b html -d docs/_build/doctrees docs $(SITE)

notebooks: $(STAMP) ## Re-execute the notebooks in place, strip metadata (review the diff, then commit)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.record_timing=False \
		notebooks/[0-9][0-9]_*.ipynb
	$(BIN)/python notebooks/clean.py

lint: $(STAMP) ## Check style and imports (ruff) and types (mypy)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP) ## Run the unit tests and the docstring examples
	$(BIN)/python -m pytest tests virnucpro_merge --doctest-modules

unit-fast: $(STAMP) ## The inner loop: the unit tests and doctests but the slow ones (a minute or so), first failure stops
	$(BIN)/python -m pytest tests virnucpro_merge --doctest-modules -m "not slow" -x -q

nbval: $(STAMP) ## Run the notebooks under nbval only (outputs compared)
	$(BIN)/python -m pytest $(NBVAL) notebooks

test: lint unit nbval docs ## Everything CI checks: linters, unit tests and doctests, notebooks under nbval, the docs site

torture: $(STAMP) ## Kill 50 merges at random moments; print which phases the kills hit
	$(BIN)/python -m tests.killing --trials 50

bench: $(STAMP) ## Run the merge, ID-validation, checkpoint-reader, report-at-scale, health and watch benchmarks (several minutes)
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_validation.py
	$(BIN)/python benchmarks/bench_checkpoints.py
	$(BIN)/python benchmarks/bench_report_scale.py
	$(BIN)/python benchmarks/bench_health.py
	$(BIN)/python benchmarks/bench_watch.py

clean: ## Remove the virtualenv, the demo run and build leftovers
	rm -rf $(VENV) $(DEMO) $(REPORT) docs/_build docs/reference/generated *.egg-info .pytest_cache
