# tta_bench — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-full describe bench paper-tables snapshot clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install tta_bench with pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: install ## the default experiment: source, norm, tent on digits_c continual, then a comparison table
	$(PY) run.py experiment=embedded_default

test: install ## the test suite (CPU, under 15 minutes on 2 cores)
	$(PY) -m pytest -q -m "not slow"

test-full: install ## the test suite including slow end-to-end runs on the full embedded benchmark
	$(PY) -m pytest -q

describe: install ## print the embedded benchmark's required properties
	$(PY) scripts/describe_embedded.py

bench: install ## runner overhead vs a bare loop (figures in README)
	$(PY) scripts/bench_overhead.py

RESULTS_DIR ?= results
paper-tables: install ## tables (.md/.tex) and plots from finished runs; RESULTS_DIR=<dir>, ARGS="dataset=digits_c setting=continual"
	$(PY) scripts/paper_tables.py --results-dir $(RESULTS_DIR) $(ARGS)

SNAPSHOT ?= results/snapshots/$(shell date -u +%F)_$(shell git rev-parse --short HEAD)
snapshot: install ## the full embedded sweep (every method x continual, reset_each_shift x 3 seeds; hours on CPU), rendered; SNAPSHOT=<dir> continues one
	$(PY) run.py -m method=$$($(PY) -c "import tta_bench; print(','.join(tta_bench.list_methods()))") \
		data=digits_c_continual,digits_c_reset_each_shift seed=1,2,3 progress=false results_dir=$(SNAPSHOT) \
		'hydra.sweep.dir=results/hydra/multirun/$${now:%Y-%m-%d}/$${now:%H-%M-%S}'
	$(PY) scripts/paper_tables.py --results-dir $(SNAPSHOT)

clean: ## remove the venv, results and caches (not data/ or models/)
	rm -rf $(VENV) results .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
